"""Frozen autoencoders: diffusers `AutoencoderDC` (DC-AE) from a local path, or pixel space for the embedded default."""

from dataclasses import dataclass

import torch
from torch import nn

from sana_lightning.local_paths import local_model_dir


@dataclass
class AutoencoderConfig:
    """The frozen autoencoder."""

    path: str | None = None
    """Local diffusers `AutoencoderDC` directory (DC-AE f32c32 for real Sana); empty: pixel space."""
    subfolder: str | None = None


class PixelAutoencoder(nn.Module):
    """Identity 'autoencoder': the model denoises RGB pixels in [-1, 1] directly (the embedded Shapes default)."""

    latent_channels = 3
    downsample_factor = 1
    scaling_factor = 1.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)


class DCAutoencoder(nn.Module):
    """diffusers `AutoencoderDC` loaded from `path`; latents are multiplied by the config's `scaling_factor`."""

    def __init__(self, path: str, subfolder: str | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderDC

        local_model_dir(
            path,
            "autoencoder path",
            "set autoencoder.path to a local diffusers AutoencoderDC directory "
            "(e.g. a downloaded mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers), or null for pixel space",
        )
        self.vae = AutoencoderDC.from_pretrained(path, subfolder=subfolder).eval().requires_grad_(False)
        config = self.vae.config
        self.latent_channels = config.latent_channels
        self.downsample_factor = 2 ** (len(config.encoder_block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)

    def train(self, mode: bool = True) -> "DCAutoencoder":
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images.to(self.vae.dtype)).latent * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample.clamp(-1, 1)


def load_autoencoder(path: str | None = None, subfolder: str | None = None) -> PixelAutoencoder | DCAutoencoder:
    """DC-AE from a local directory, or pixel space when `path` is empty."""
    return DCAutoencoder(path, subfolder) if path else PixelAutoencoder()
