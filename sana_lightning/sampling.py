"""Sampling with Sana's Flow-Euler and Flow-DPM-Solver (diffusers schedulers) and classifier-free guidance."""

from dataclasses import dataclass, replace
from typing import Literal

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
from tqdm.auto import tqdm

from sana_lightning.flow import velocity


@dataclass
class SamplerConfig:
    """How images are drawn from the model."""

    solver: Literal["flow_euler", "flow_dpm_solver"] = "flow_euler"
    steps: int = 20
    guidance_scale: float = 4.5
    """Classifier-free guidance weight; 1.0 turns guidance (and the unconditional pass) off."""
    shift: float | None = 3.0
    """Flow shift of the sampling schedule; keep it equal to the training shift (None: the module's `flow.shift`)."""

    def with_default_shift(self, shift: float) -> "SamplerConfig":
        """This config, sampling at `shift` where it names no shift of its own."""
        return self if self.shift is not None else replace(self, shift=shift)


def make_scheduler(config: SamplerConfig) -> FlowMatchEulerDiscreteScheduler | DPMSolverMultistepScheduler:
    if config.solver == "flow_euler":
        return FlowMatchEulerDiscreteScheduler(shift=config.shift)
    if config.solver == "flow_dpm_solver":
        return DPMSolverMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=config.shift
        )
    raise ValueError(f"unknown solver '{config.solver}': use flow_euler or flow_dpm_solver")


@torch.no_grad()
def denoise(
    transformer: SanaTransformer2DModel,
    noise: torch.Tensor,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    null_embeds: torch.Tensor,
    null_mask: torch.Tensor,
    config: SamplerConfig,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate the flow from `noise` (sigma = 1) to a clean latent, guided towards the caption embeddings."""
    scheduler = make_scheduler(config)
    scheduler.set_timesteps(config.steps, device=noise.device)
    guided = config.guidance_scale != 1.0
    if guided:
        embeds = torch.cat([null_embeds.expand_as(embeds), embeds])
        mask = torch.cat([null_mask.expand_as(mask), mask])
    latents = noise
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        model_input = torch.cat([latents, latents]) if guided else latents
        prediction = velocity(transformer, model_input, t.expand(model_input.shape[0]), embeds, mask).float()
        if guided:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + config.guidance_scale * (cond - uncond)
        latents = scheduler.step(prediction, t, latents.float()).prev_sample.to(noise.dtype)
    return latents


def sampler_sigmas(config: SamplerConfig, steps: int) -> list[float]:
    """The noise levels `config`'s sampler visits in `steps` steps (the default calibration noise levels)."""
    scheduler = make_scheduler(replace(config, steps=steps))
    scheduler.set_timesteps(steps)
    return [float(s) for s in scheduler.sigmas[:-1]]


def initial_noise(
    batch_size: int, channels: int, size: int, seeds: list[int] | int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """One noise tensor per seed, independent of batch composition (sample i is the same in any batch)."""
    seeds = list(range(seeds, seeds + batch_size)) if isinstance(seeds, int) else seeds
    noise = [torch.randn(channels, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(device)
