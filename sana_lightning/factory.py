"""Everything built from config: the transformer (from one `TransformerSource`), judges and detectors.

Where a module's transformer comes from is decided here and nowhere else:
- `preset` (+ `overrides`): a randomly initialised `SanaTransformer2DModel` of a named size;
- `pretrained`: the weights of a checkpoint, consolidated FSDP checkpoint or diffusers directory (a pruned model is
  one: the `prune` command writes a diffusers directory), EMA or raw by `weights`;
- `pretrained` + `growth`: those weights grown in depth (SANA 1.5 partial preservation init and the other strategies).
A setting the chosen source would not use is an error, never ignored.

`resolve_on_meta` builds any of them on the `meta` device from configs alone, with the `LazyWeights` that fill it
once it is sharded: each rank reads (safetensors slices) or draws (fresh blocks, seeded per block) only its shard.
`build_sharded` does all three steps without Lightning.
"""

import functools
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from diffusers import SanaTransformer2DModel
from torch.distributed.device_mesh import DeviceMesh

from sana_lightning.blocks import seeded_model
from sana_lightning.checkpoints import load_checkpoint_transformer, load_transformer_config
from sana_lightning.growth import GrowthConfig, block_plan, grow, grown_fills
from sana_lightning.materialize import Fill, fill, open_source
from sana_lightning.presets import build_transformer, preset_config
from sana_lightning.sharding import ShardingConfig, mesh_device, shard_transformer

DEFAULT_PRESET = "small"
GROWN_KEYS = ("num_layers", "qk_norm", "sample_size")
"""Set by growth (`target_layers`, `qk_norm`) or by the data (`sample_size`), never taken from a growth source."""


@dataclass
class TransformerSource:
    """Where a transformer comes from: a `preset`, or `pretrained` weights, optionally grown by `growth`."""

    preset: str | None = None
    """Named size (`tiny`, `small`, `sana-1.6b`, `sana-4.8b`, ...) of a randomly initialised model; default `small`
    when no `pretrained` is given. With `pretrained` + `growth` it is only checked against the source's widths."""
    overrides: dict | None = None
    """`SanaTransformer2DModel` options over the preset (e.g. `num_layers`); not allowed with plain `pretrained`."""
    pretrained: str | None = None
    """A sana-lightning checkpoint (a glob picks the newest match), a consolidated FSDP checkpoint or a diffusers
    directory (an exported, pruned or official Sana model, or a pipeline holding `transformer/`)."""
    weights: str = "ema"
    """Which weights of a `pretrained` checkpoint: `ema` (falls back to the trained ones) or `raw`."""
    growth: GrowthConfig | None = None
    """Grow `pretrained` in depth first (SANA 1.5 depth growth)."""

    def describe(self) -> str:
        if self.growth is not None:
            return f"source '{self.pretrained}'"
        return f"transformer '{self.pretrained}'" if self.pretrained else f"preset '{self.preset or DEFAULT_PRESET}'"


def _check_io(model: SanaTransformer2DModel, io_channels: dict[str, int], name: str) -> None:
    for key, expected in io_channels.items():
        if model.config[key] != expected:
            raise ValueError(
                f"{name} has {key}={model.config[key]} but the text encoder / autoencoder give {expected}: "
                "configure the text_encoder and autoencoder it was trained with"
            )


def _check_growth_widths(source: SanaTransformer2DModel, spec: TransformerSource, io_channels: dict) -> None:
    """Growth takes the target's widths from the source: a preset / overrides may only agree with it."""
    expected = preset_config(spec.preset, **(spec.overrides or {})) if spec.preset else spec.overrides or {}
    ignored = (*GROWN_KEYS, *io_channels)  # the codecs' widths are checked by _check_io
    conflicts = [
        f"{k}={source.config.get(k)} (target {v})"
        for k, v in expected.items()
        if k not in ignored and source.config.get(k) != v
    ]
    if conflicts:
        raise ValueError(
            f"growth takes the target's widths from the source, which differs from preset={spec.preset!r} / "
            f"transformer overrides in {', '.join(conflicts)}: drop them from the growth config"
        )


def resolve_transformer(
    spec: TransformerSource, io_channels: dict[str, int], defaults: dict | None = None, seed: int = 0
) -> tuple[SanaTransformer2DModel, list[int | None] | None]:
    """The transformer `spec` describes and, when grown, the source block each block started from (None: new).

    `io_channels` are the widths the text encoder / autoencoder dictate (checked, or set on a preset);
    `defaults` are preset options the caller derives (e.g. `sample_size` from the image size), below `overrides`;
    `seed` draws growth's fresh blocks (block i from (seed, i) alone)."""
    model, origins, _ = _resolve(spec, io_channels, defaults, seed, meta=False)
    return model, origins


@dataclass
class LazyWeights:
    """How to fill a transformer `resolve_on_meta` built: each tensor's `materialize.Fill`, reading `source`."""

    fills: Callable[[str], Fill]
    source: str | None = None
    weights: str = "ema"

    def materialize(self, model: SanaTransformer2DModel, device: torch.device) -> None:
        """Fill `model` (on meta, FSDP2-sharded or not) on `device`: each rank reads and computes only its shard."""
        with open_source(self.source, self.weights) if self.source else nullcontext() as read:
            fill(model, self.fills, read, device)


def resolve_on_meta(
    spec: TransformerSource, io_channels: dict[str, int], defaults: dict | None = None, seed: int = 0
) -> tuple[SanaTransformer2DModel, list[int | None] | None, LazyWeights]:
    """`resolve_transformer` on the `meta` device, reading only configs (a checkpoint file's pickled metadata, a
    diffusers directory's config.json), plus the `LazyWeights` that fill it: after `LazyWeights.materialize` it
    holds the same values `resolve_transformer(spec, ..., seed)` gives, except that a preset's blocks are drawn per
    block (block i from (seed, i), the rest from (seed, -1)) instead of from the global random state."""
    return _resolve(spec, io_channels, defaults, seed, meta=True)


def build_sharded(
    spec: TransformerSource,
    io_channels: dict[str, int],
    mesh: DeviceMesh | None,
    sharding: ShardingConfig,
    seed: int = 0,
    defaults: dict | None = None,
) -> SanaTransformer2DModel:
    """The transformer `spec` describes, built on meta, FSDP2-sharded over `mesh` (None: not sharded) and filled on
    the mesh's device, each rank holding only its shard from load on (no Lightning needed)."""
    model, _, lazy = resolve_on_meta(spec, io_channels, defaults, seed)
    if mesh is not None:
        shard_transformer(model, mesh, sharding)
    lazy.materialize(model, mesh_device(mesh))
    return model


def _source(path: str, weights: str, meta: bool) -> SanaTransformer2DModel:
    if not meta:
        return load_checkpoint_transformer(path, weights)
    with torch.device("meta"):
        return SanaTransformer2DModel.from_config(load_transformer_config(path))


def _resolve(
    spec: TransformerSource, io_channels: dict[str, int], defaults: dict | None, seed: int, meta: bool
) -> tuple[SanaTransformer2DModel, list[int | None] | None, LazyWeights]:
    if spec.growth is not None and not spec.pretrained:
        raise ValueError("growth needs pretrained: the checkpoint or diffusers directory to grow")
    if spec.pretrained and spec.growth is None:
        if spec.preset or spec.overrides:
            given = f"preset={spec.preset!r}" if spec.preset else f"transformer={spec.overrides}"
            raise ValueError(
                f"pretrained '{spec.pretrained}' fixes the architecture: remove {given} (or drop pretrained to "
                "train a preset from scratch)"
            )
        model = _source(spec.pretrained, spec.weights, meta)
        _check_io(model, io_channels, spec.describe())
        return model, None, LazyWeights(str, spec.pretrained, spec.weights)  # each tensor: the source's of its name
    if spec.pretrained:
        source = _source(spec.pretrained, spec.weights, meta)
        _check_io(source, io_channels, spec.describe())
        _check_growth_widths(source, spec, io_channels)
        model, origins = grow(source, spec.growth, seed)
        plan = block_plan(len(source.transformer_blocks), spec.growth)
        fills = grown_fills(model, set(source.state_dict()), plan, spec.growth, seed)
        return model, origins, LazyWeights(fills, spec.pretrained, spec.weights)
    overrides = spec.overrides or {}
    for key, value in overrides.items():
        if key in io_channels and value != io_channels[key]:
            raise ValueError(
                f"transformer.{key}={value} does not match the encoders ({io_channels[key]}): remove the override"
            )
    config = {**(defaults or {}), **overrides, **io_channels}
    model = build_transformer(spec.preset or DEFAULT_PRESET, device="meta" if meta else None, **config)
    return model, None, LazyWeights(_preset_fills(model, seed))


def _preset_fills(model: SanaTransformer2DModel, seed: int) -> Callable[[str], Fill]:
    """A preset's tensors drawn per block: block i is block 0 of `seeded_model(config, seed, i, 1)`, the rest is
    `seeded_model(config, seed, -1, 0)`'s (two parts kept)."""

    @functools.lru_cache(maxsize=2)
    def part(index: int) -> dict[str, torch.Tensor]:
        return seeded_model(model.config, seed, index, int(index >= 0)).state_dict()

    def fills(name: str) -> Fill:
        if not name.startswith("transformer_blocks."):
            return part(-1)[name]
        _, index, rest = name.split(".", 2)
        return part(int(index))[f"transformer_blocks.0.{rest}"]

    return fills


def make_judge(
    name: str,
    path: str | None,
    records: list[dict],
    question: str | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
    batch_size: int = 32,
):
    """`oracle` (GenEval + the Shapes detector), `clip` or `vlm` (transformers models from `path`, `batch_size` pairs
    a forward; the VLM asks SANA's verifier prompt unless `question` is given, and runs a custom-code verifier only
    with `trust_remote_code`), or `random` (the lower bound)."""
    from sana_lightning.inference_scaling.judges import CLIPJudge, GenEvalOracleJudge, RandomJudge, VLMJudge

    if question is not None and name != "vlm":
        raise ValueError(f"--question is the vlm judge's; the {name} judge asks none")
    if name == "oracle":
        if any("tag" not in r for r in records):
            raise ValueError("the oracle judge needs GenEval metadata prompts (a metadata.jsonl), not plain text")
        return GenEvalOracleJudge(make_detector("shapes"), {r["prompt"]: r for r in records})
    if name == "random":
        return RandomJudge()
    if name in ("clip", "vlm"):
        if not path:
            raise ValueError(f"the {name} judge needs judge_path: a local transformers model directory")
        if name == "clip":
            return CLIPJudge(path, device, batch_size=batch_size)
        question = question or VLMJudge.OFFICIAL_PROMPT
        return VLMJudge(path, question, trust_remote_code, device, batch_size=batch_size)
    raise ValueError(f"unknown judge '{name}': use oracle, clip, vlm or random")


def make_detector(
    name: str = "shapes", detector_path: str | None = None, clip_path: str | None = None, device: str = "cpu"
):
    """`shapes` (the exact Shapes detector), `mask2former` (instance segmentation + CLIP on the masked object, as
    GenEval) or `transformers` (an object detector + CLIP on the box), models from local paths."""
    if name == "shapes":
        from sana_lightning.eval.shapes_detector import ShapesDetector

        return ShapesDetector()
    if name in ("mask2former", "transformers"):
        from sana_lightning.eval.transformers_detector import Mask2FormerDetector, TransformersDetector

        if not detector_path or not clip_path:
            raise ValueError(f"the {name} detector needs --detector_path and --clip_path (local model directories)")
        backend = Mask2FormerDetector if name == "mask2former" else TransformersDetector
        return backend(detector_path, clip_path, device)
    raise ValueError(f"unknown detector '{name}': use shapes, mask2former or transformers")
