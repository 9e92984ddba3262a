"""Rectified-flow training objective of Sana, as pure tensor functions.

Convention (as diffusers' flow-matching schedulers): sigma = 1 is pure noise, x_t = (1 - sigma) x0 + sigma eps, the
model predicts the velocity v = eps - x0 and is given `timestep = sigma * 1000`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class FlowConfig:
    """Timestep distribution of training."""

    logit_mean: float = 0.0
    """Mean of the logit-normal timestep density."""
    logit_std: float = 1.0
    """Standard deviation of the logit-normal timestep density."""
    shift: float = 3.0
    """Flow shift: moves timesteps towards noise (Sana uses 3.0 on 1024px latents; ~1 suits small images)."""


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The same timestep shift as `FlowMatchEulerDiscreteScheduler(shift=...)`."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(batch_size: int, config: FlowConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training noise levels: sigmoid of a normal (logit-normal), then shifted."""
    u = torch.randn(batch_size, generator=generator) * config.logit_std + config.logit_mean
    return shift_sigmas(torch.sigmoid(u), config.shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma eps, sigma broadcast per sample."""
    sigmas = sigmas.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1 - sigmas) * x0 + sigmas * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error against the velocity target, in fp32."""
    return F.mse_loss(prediction.float(), velocity_target(x0, noise).float())


def timesteps_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    return sigmas * NUM_TRAIN_TIMESTEPS


def velocity(transformer, latents: torch.Tensor, timesteps: torch.Tensor, embeds, mask) -> torch.Tensor:
    """The transformer's velocity prediction at `timesteps` (sigma x 1000, one per sample), called as diffusers'
    Sana pipeline calls it."""
    timestep = timesteps.to(latents) * transformer.config.timestep_scale
    return transformer(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep).sample


def caption_drop_mask(batch_size: int, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which captions to replace by the empty caption, so that the model also learns the unconditional velocity."""
    return torch.rand(batch_size, generator=generator) < probability
