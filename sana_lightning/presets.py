"""Named `SanaTransformer2DModel` sizes, from CPU-test tiny to SANA 1.5's 4.8B."""

from pathlib import Path
from typing import Any

import torch
from diffusers import SanaTransformer2DModel

from sana_lightning.local_paths import local_model_dir

_SANA_WIDTH_2240 = dict(
    num_attention_heads=70,
    attention_head_dim=32,
    num_cross_attention_heads=20,
    cross_attention_head_dim=112,
    cross_attention_dim=2240,
    caption_channels=2304,  # Gemma-2-2B-IT hidden size
    mlp_ratio=2.5,
    in_channels=32,  # DC-AE f32c32 latent channels
    out_channels=32,
    patch_size=1,
    sample_size=32,
    qk_norm="rms_norm_across_heads",
)

# Pixel-space Shapes models: 32-wide heads, MiniLM captions (384), RGB in and out, 2x2 patches.
_PIXEL_SHAPES = dict(
    attention_head_dim=32,
    cross_attention_head_dim=32,
    caption_channels=384,
    mlp_ratio=2.5,
    in_channels=3,
    out_channels=3,
    patch_size=2,
    sample_size=16,
    qk_norm="rms_norm_across_heads",
)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests: < 1M parameters.
    "tiny": dict(
        _PIXEL_SHAPES, num_layers=2, num_attention_heads=2, num_cross_attention_heads=2, cross_attention_dim=64
    ),
    # CPU demo on 32x32 pixel-space Shapes: ~1.8M parameters.
    "small": dict(
        _PIXEL_SHAPES, num_layers=6, num_attention_heads=4, num_cross_attention_heads=4, cross_attention_dim=128
    ),
    # Sana 600M: 28 blocks x 1152.
    "sana-600m": dict(
        _SANA_WIDTH_2240,
        num_layers=28,
        num_attention_heads=36,
        num_cross_attention_heads=16,
        cross_attention_head_dim=72,
        cross_attention_dim=1152,
    ),
    "sana-1.6b": dict(_SANA_WIDTH_2240, num_layers=20),
    "sana-4.8b": dict(_SANA_WIDTH_2240, num_layers=60),
}


def preset_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The `SanaTransformer2DModel` config of `preset`, with `overrides` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - set(SanaTransformer2DModel._get_init_keys(SanaTransformer2DModel))
    if unknown:
        raise ValueError(f"unknown SanaTransformer2DModel option(s) {sorted(unknown)} in the transformer overrides")
    return {**PRESETS[preset], **overrides}


def build_transformer(
    preset: str, device: str | torch.device | None = None, **overrides: Any
) -> SanaTransformer2DModel:
    """Build a randomly initialised transformer; `device="meta"` allocates nothing (for parameter counts)."""
    config = preset_config(preset, **overrides)
    with torch.device(device or "cpu"):
        return SanaTransformer2DModel(**config)


def transformer_folder(path: str) -> str:
    """The directory holding a `SanaTransformer2DModel`: a local diffusers model directory itself, or a pipeline's
    `transformer/`."""
    local_model_dir(
        path,
        "transformer path",
        "give a local diffusers SanaTransformer2DModel directory (or a Sana pipeline directory holding transformer/)",
    )
    return str(Path(path, "transformer")) if Path(path, "transformer", "config.json").exists() else str(path)


def load_transformer(path: str) -> SanaTransformer2DModel:
    """A `SanaTransformer2DModel` from a local diffusers directory: the model itself or a pipeline's `transformer/`."""
    return SanaTransformer2DModel.from_pretrained(transformer_folder(path))
