"""Depth growth of a trained `SanaTransformer2DModel` (SANA 1.5, section 2.1), as pure functions.

Growth changes depth only: the grown model copies every config key of the source except `num_layers` and `qk_norm`.
Strategies for growing N source blocks into M target blocks (a "copy" is a target block that repeats a source block
already used; "fresh" blocks copy nothing):
- `partial_preservation` (SANA 1.5, the official code's `constant`): keep the first N - k source blocks
  (k = `drop_last`, 2 in the paper), then M - (N - k) fresh blocks;
- `cyclic`: block i copies source block i mod N;
- `progressive`: the N source blocks, then M - N copies of the last one;
- `interpolation`: block i copies source block floor(i N / M), so each source block is followed by its copies and
  depth is stretched evenly (M need not be a multiple of N);
- `block_expand`: `interpolation` with M a multiple of N (each block repeated M / N times in place);
- `stack` (G_stack): the whole source stack repeated M / N times, nothing zeroed;
- `random`: the N source blocks, then M - N fresh blocks that are never zeroed (our reading of the official
  `random`: the baseline whose new blocks start random, not as the identity).
With `zero_new`, fresh blocks and copies get zeroed output projections, so each is the identity and the grown model
starts as the source (as the kept blocks compose); `zero_gate` also zeroes their `scale_shift_table` (the official
zero-gate option). Fresh blocks start from `init` (`blocks.official_init` or diffusers' default). Everything outside
the blocks (patch/time/caption embeddings, output head) is copied.

A source without QK RMSNorm can grow into a target with it (norm weights start at one), but its blocks then compute
something else, so growth is not the identity: SANA first fine-tunes the source with QK norm (their
`Sana_1600M_1024px_allqknorm`, `configs/qknorm_1.6b.yaml`: this function with M = N, `drop_last` 0), then grows.
`grow` logs that difference in one warning line.
"""

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import SanaTransformer2DModel

from sana_lightning.atomic import atomic_directory, tensor_bytes
from sana_lightning.blocks import output_names, seeded_model
from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.materialize import Fill, fill

log = logging.getLogger(__name__)

Strategy = Literal["partial_preservation", "cyclic", "progressive", "interpolation", "block_expand", "stack", "random"]
Init = Literal["official", "diffusers"]


@dataclass
class GrowthConfig:
    """How to grow the source model."""

    target_layers: int
    """Depth M of the grown model (SANA 1.5: 20 -> 60)."""
    strategy: Strategy = "partial_preservation"
    drop_last: int = 2
    """partial_preservation: source blocks dropped from the end before growing (k)."""
    zero_new: bool = True
    """Zero the output projections of fresh blocks and copies, so the grown model starts as the source (not for
    `stack` and `random`, which never zero)."""
    zero_gate: bool = False
    """Also zero those blocks' `scale_shift_table` (the official zero-gate option)."""
    init: Init = "official"
    """Fresh blocks: `official` (SANA's growth init, `blocks.official_init`) or `diffusers` (its default init)."""
    qk_norm: str | None = "rms_norm_across_heads"
    """QK normalisation of the grown model (SANA 1.5 adds RMSNorm on queries and keys for stability)."""


def block_plan(num_source: int, config: GrowthConfig) -> list[tuple[int | None, bool]]:
    """For each target block: (source block it copies or None for a fresh block, whether its outputs are zeroed)."""
    m, n, zero = config.target_layers, num_source, config.zero_new
    strategy = config.strategy
    if strategy == "partial_preservation":
        kept = n - config.drop_last
        if not 0 <= config.drop_last < n:
            raise ValueError(f"drop_last={config.drop_last} must be in [0, {n - 1}] for a {n}-block source")
        if m < kept:
            raise ValueError(f"target_layers={m} is smaller than the {kept} preserved blocks: grow, do not shrink")
        return [(i, False) for i in range(kept)] + [(None, zero)] * (m - kept)
    if strategy not in Strategy.__args__:
        raise ValueError(f"unknown growth strategy '{strategy}': use {', '.join(Strategy.__args__)}")
    if strategy in ("block_expand", "stack") and m % n:
        raise ValueError(f"{strategy} needs target_layers a multiple of the source's {n} blocks, got {m}")
    if m < n:
        raise ValueError(f"target_layers={m} is smaller than the source's {n} blocks: grow, do not shrink")
    if strategy == "cyclic":
        return [(i % n, i >= n and zero) for i in range(m)]
    if strategy == "stack":
        return [(i % n, False) for i in range(m)]
    if strategy == "progressive":
        return [(i, False) for i in range(n)] + [(n - 1, zero)] * (m - n)
    if strategy == "random":
        return [(i, False) for i in range(n)] + [(None, False)] * (m - n)
    origins = [i * n // m for i in range(m)]  # interpolation, block_expand
    return [(o, i > 0 and o == origins[i - 1] and zero) for i, o in enumerate(origins)]


def preserves_source(plan: list[tuple[int | None, bool]], num_source: int) -> bool:
    """Whether the grown model computes the source's function at init: its non-zeroed blocks are the source's, in
    order (QK norm aside)."""
    return [origin for origin, zeroed in plan if not zeroed] == list(range(num_source))


def max_output_difference(a: SanaTransformer2DModel, b: SanaTransformer2DModel, seed: int = 0) -> float:
    """Max abs difference of two models' outputs on a fixed random probe (2 samples of 4x4 patches, 8 caption
    tokens, timesteps 250 and 900), run on `a`'s device and dtype."""
    parameter = next(a.parameters())
    generator = torch.Generator().manual_seed(seed)
    side = 4 * a.config.patch_size
    x = torch.randn(2, a.config.in_channels, side, side, generator=generator)
    text = torch.randn(2, 8, a.config.caption_channels, generator=generator)
    inputs = dict(
        hidden_states=x.to(parameter),
        encoder_hidden_states=text.to(parameter),
        encoder_attention_mask=torch.ones(2, 8, device=parameter.device),
        timestep=torch.tensor([250.0, 900.0], device=parameter.device),
    )
    with torch.no_grad():
        return (a(**inputs).sample.float() - b(**inputs).sample.float()).abs().max().item()


def grown_fills(
    target: SanaTransformer2DModel,
    source_names: set[str],
    plan: list[tuple[int | None, bool]],
    config: GrowthConfig,
    seed: int,
) -> Callable[[str], Fill]:
    """Where each tensor of the grown `target` comes from (`materialize.Fill`): the source's tensor of the same name
    outside the blocks and of its origin block inside, 0 for zeroed outputs, 1 for QK-norm weights the source lacks,
    and for a fresh block i its tensors under `blocks.seeded_model(..., seed, i, 1, official)` (one block kept)."""
    zeroed_names = set(output_names(target.transformer_blocks[0], config.zero_gate)) if plan else set()

    @functools.lru_cache(maxsize=1)
    def fresh(index: int) -> dict[str, torch.Tensor]:
        official = config.init == "official"
        return seeded_model(target.config, seed, index, 1, official).transformer_blocks[0].state_dict()

    def fills(name: str) -> Fill:
        if not name.startswith("transformer_blocks."):
            return name
        _, index, rest = name.split(".", 2)
        origin, zeroed = plan[int(index)]
        if zeroed and rest in zeroed_names:
            return 0.0
        if origin is None:
            return fresh(int(index))[rest]
        source_name = f"transformer_blocks.{origin}.{rest}"
        if source_name in source_names:
            return source_name
        assert ".norm_" in rest, name  # only the new QK-norm weights are missing: they start at one
        return 1.0

    return fills


def _build(
    source: SanaTransformer2DModel, plan: list[tuple[int | None, bool]], config: GrowthConfig, seed: int
) -> SanaTransformer2DModel:
    """The grown model, on the source's device: on `meta` nothing is read (`grown_fills` fills it later)."""
    target_config = {**source.config, "num_layers": len(plan), "qk_norm": config.qk_norm}
    target_config = {k: v for k, v in target_config.items() if not k.startswith("_")}
    parameter = next(source.parameters())
    with torch.device("meta"):
        target = SanaTransformer2DModel(**target_config)
    if parameter.dtype != torch.float32:
        target = target.to(parameter.dtype)
    if not parameter.is_meta:
        state = source.state_dict()
        fills = grown_fills(target, set(state), plan, config, seed)
        fill(target, fills, lambda name, index: state[name][index], parameter.device)
    return target


def grow(
    source: SanaTransformer2DModel, config: GrowthConfig, seed: int = 0
) -> tuple[SanaTransformer2DModel, list[int | None]]:
    """The grown model and, per target block, the source block it started from (None: a fresh block, drawn from
    (`seed`, its index) alone). A source on the `meta` device gives the grown model on meta, read nowhere.

    When the source lacks the target's QK norm, logs one warning line with the measured max abs output difference
    between the source and its blocks with QK norm added (the grown model itself when it preserves the source; on
    meta it is not measured).
    """
    n = len(source.transformer_blocks)
    if source.config.qk_norm not in (None, config.qk_norm):
        raise ValueError(
            f"the source uses qk_norm={source.config.qk_norm!r} and the target {config.qk_norm!r}: growing cannot "
            "remove or change QK normalisation; set growth.qk_norm to the source's"
        )
    if config.init not in Init.__args__:
        raise ValueError(f"unknown growth init '{config.init}': use {', '.join(Init.__args__)}")
    plan = block_plan(n, config)
    target = _build(source, plan, config, seed)
    if source.config.qk_norm is None and config.qk_norm is not None:
        identity = [(i, False) for i in range(n)]
        if next(source.parameters()).is_meta:
            difference = "(not measured on the meta device)"
        else:
            reference = target if preserves_source(plan, n) else _build(source, identity, config, seed)
            difference = f"{max_output_difference(source, reference):.3g}"
        if plan == identity:
            log.warning(
                f"adding qk_norm={config.qk_norm!r} changes the source's output by {difference} (max abs, random "
                "probe): fine-tune it with QK norm (stage 1, configs/qknorm_1.6b.yaml) before growing"
            )
        else:
            log.warning(
                f"the source has no QK norm: with qk_norm={config.qk_norm!r} its blocks' output differs by "
                f"{difference} (max abs, random probe), so growth is not identity at init; fine-tune the source "
                "with QK norm first (configs/qknorm_1.6b.yaml), then grow from that"
            )
    return target, [origin for origin, _ in plan]


def grow_checkpoint(
    source: str,
    out_dir: str,
    target_layers: int,
    strategy: Strategy = "partial_preservation",
    drop_last: int = 2,
    zero_new: bool = True,
    zero_gate: bool = False,
    init: Init = "official",
    qk_norm: str | None = "rms_norm_across_heads",
    source_weights: str = "ema",
    seed: int = 0,
) -> Path:
    """Grow a checkpoint (or diffusers directory) without training; write a diffusers directory plus `growth.json`
    (atomically: a finished directory replaces `out_dir`).

    Args:
        source: A sana-lightning checkpoint (a glob picks the newest), consolidated FSDP checkpoint or diffusers dir.
        out_dir: The diffusers directory to write.
        target_layers: Depth of the grown model (SANA 1.5: 20 -> 60).
        strategy: partial_preservation (SANA 1.5), cyclic, progressive, interpolation, block_expand, stack, random.
        drop_last: partial_preservation: source blocks dropped from the end before growing.
        zero_new: Zero the output projections of fresh blocks and copies, so the grown model starts as the source.
        zero_gate: Also zero those blocks' scale_shift_table (the official zero-gate option).
        init: Fresh blocks: official (SANA's growth init) or diffusers (its default init).
        qk_norm: QK normalisation of the grown model (SANA 1.5: rms_norm_across_heads).
        source_weights: ema (falls back to the trained weights) or raw.
        seed: Seeds each fresh block by (seed, block index).
    """
    config = GrowthConfig(target_layers, strategy, drop_last, zero_new, zero_gate, init, qk_norm)
    grown, origins = grow(load_checkpoint_transformer(source, source_weights), config, seed)
    out = Path(out_dir)
    with atomic_directory(out, tensor_bytes(grown.state_dict())) as staging:
        grown.save_pretrained(staging)
        (staging / "growth.json").write_text(
            json.dumps({"source": source, **asdict(config), "block_origins": origins}, indent=2)
        )
    print(f"grown {len(origins) - origins.count(None)} source blocks + {origins.count(None)} new -> {out}")
    return out
