"""Depth growth of a trained `SanaTransformer2DModel` (SANA 1.5, section 2.1), as pure functions.

Strategies for growing N source blocks into M target blocks:
- `partial_preservation` (SANA 1.5): keep the first N - k source blocks (k = `drop_last`, 2 in the paper) and append
  new blocks whose output projections are zero, so each new block is the identity at initialisation;
- `cyclic`: block i copies source block i mod N (copies past the first N zeroed when `zero_new`);
- `block_expand`: each source block repeated r = M / N times in place, copies after the first zeroed;
- `stack` (G_stack): the whole source stack repeated r = M / N times, nothing zeroed.
Everything outside the blocks (patch/time/caption embeddings, output head) is copied. A source without QK RMSNorm
grows into a target with it (norm weights start at one).
"""

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import SanaTransformer2DModel

from sana_lightning.blocks import zero_block_outputs

Strategy = Literal["partial_preservation", "cyclic", "block_expand", "stack"]


@dataclass
class GrowthConfig:
    """How to grow the source model."""

    target_layers: int
    """Depth M of the grown model (SANA 1.5: 20 -> 60)."""
    strategy: Strategy = "partial_preservation"
    drop_last: int = 2
    """partial_preservation: source blocks dropped from the end before growing (k)."""
    zero_new: bool = True
    """cyclic: zero the output projections of the copied blocks, so the grown model starts as the source."""
    qk_norm: str | None = "rms_norm_across_heads"
    """QK normalisation of the grown model (SANA 1.5 adds RMSNorm on queries and keys for stability)."""


def block_plan(num_source: int, config: GrowthConfig) -> list[tuple[int | None, bool]]:
    """For each target block: (source block it copies or None for a fresh block, whether its outputs are zeroed)."""
    m, n = config.target_layers, num_source
    if config.strategy == "partial_preservation":
        kept = n - config.drop_last
        if not 0 <= config.drop_last < n:
            raise ValueError(f"drop_last={config.drop_last} must be in [0, {n - 1}] for a {n}-block source")
        if m < kept:
            raise ValueError(f"target_layers={m} is smaller than the {kept} preserved blocks: grow, do not shrink")
        return [(i, False) for i in range(kept)] + [(None, True)] * (m - kept)
    if config.strategy == "cyclic":
        if m < n:
            raise ValueError(f"target_layers={m} is smaller than the source's {n} blocks")
        return [(i % n, i >= n and config.zero_new) for i in range(m)]
    if config.strategy in ("block_expand", "stack"):
        if m % n:
            raise ValueError(f"{config.strategy} needs target_layers a multiple of the source's {n} blocks, got {m}")
        r = m // n
        if config.strategy == "block_expand":
            return [(i, copy > 0) for i in range(n) for copy in range(r)]
        return [(i, False) for _ in range(r) for i in range(n)]
    raise ValueError(f"unknown growth strategy '{config.strategy}': use {', '.join(Strategy.__args__)}")


def grow(source: SanaTransformer2DModel, config: GrowthConfig) -> tuple[SanaTransformer2DModel, list[int | None]]:
    """The grown model and, per target block, the source block it started from (None: a fresh identity block).

    Fresh blocks keep diffusers' random initialisation except their zeroed output projections.
    """
    if source.config.qk_norm is not None and config.qk_norm is None:
        raise ValueError(
            f"the source uses qk_norm={source.config.qk_norm!r} and the target none: growing cannot remove "
            "QK normalisation; set growth.qk_norm to the source's"
        )
    plan = block_plan(len(source.transformer_blocks), config)
    target_config = {**source.config, "num_layers": config.target_layers, "qk_norm": config.qk_norm}
    target_config = {k: v for k, v in target_config.items() if not k.startswith("_")}
    device = next(source.parameters()).device
    with torch.device(device):
        target = SanaTransformer2DModel(**target_config).to(next(source.parameters()).dtype)
    outside = {k: v for k, v in source.state_dict().items() if not k.startswith("transformer_blocks.")}
    target.load_state_dict(outside, strict=False)
    for block, (origin, zeroed) in zip(target.transformer_blocks, plan):
        if origin is not None:
            # Missing keys are only the new QK-norm weights, which stay at one.
            missing, unexpected = block.load_state_dict(source.transformer_blocks[origin].state_dict(), strict=False)
            assert not unexpected and all(".norm_" in k for k in missing), (missing, unexpected)
        if zeroed:
            zero_block_outputs(block)
    return target, [origin for origin, _ in plan]
