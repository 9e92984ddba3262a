"""The `importance` and `prune` commands: block importance of a checkpoint, and the checkpoint pruned by it."""

import json
from pathlib import Path

from sana_lightning.atomic import atomic_directory, tensor_bytes
from sana_lightning.plots import importance_figure
from sana_lightning.pruning.importance import METRICS, Importance, module_importance, prune, select_blocks
from sana_lightning.trainer_options import TrainerOptions


def _measure_on_devices(module, shards: str, batch_size: int, num_sigmas: int, loss_delta: bool, seed: int, trainer):
    """`module_importance` on the first device of the `trainer`'s flags (the module is moved there), in its precision
    (fp32, or autocast for `bf16-mixed`): on the CPU in fp32, the same scores as without flags there."""
    from sana_lightning.data.shards import expand_shards
    from sana_lightning.data.stream import ShardStream, StreamConfig

    device, precision = (trainer or TrainerOptions()).device_and_precision()
    module.to(device)
    config = StreamConfig(batch_size, module.hparams.image_size, 1, shuffle_buffer=1, seed=seed)
    stream = ShardStream(expand_shards(shards), config)
    with precision.forward_context():
        return module_importance(module, next(iter(stream)), num_sigmas, loss_delta, seed)


def _write_importance(importance: Importance, out: Path, record: dict, removed: list[int] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "importance.json").write_text(json.dumps(record | importance.to_dict(), indent=2))
    importance_figure(importance, removed).savefig(out / "importance.png", dpi=110)
    for metric, scores in importance.scores.items():
        print(f"{metric:>10}: " + " ".join(f"{v:.4f}" for v in scores.tolist()))


def _load(checkpoint: str, text_encoder: str | None, autoencoder: str | None, image_size: int | None):
    """A checkpoint or diffusers directory; the encoder paths and image size are needed for foreign diffusers models."""
    from sana_lightning.module import SanaFlowModule

    settings = dict(image_size=image_size)
    settings["text_encoder"] = {"path": text_encoder} if text_encoder else None
    settings["autoencoder"] = {"path": autoencoder} if autoencoder else None
    return SanaFlowModule.from_checkpoint(checkpoint, **settings)


def importance_report(
    checkpoint: str,
    out_dir: str = "reports/importance",
    shards: str = "data/shapes/val-*.tar",
    batch_size: int = 32,
    num_sigmas: int = 10,
    loss_delta: bool = True,
    seed: int = 0,
    text_encoder: str | None = None,
    autoencoder: str | None = None,
    image_size: int | None = None,
    trainer: TrainerOptions | None = None,
) -> Importance:
    """Block importance of a checkpoint on a calibration batch of `shards`: `importance.json` and `.png`.

    Args:
        checkpoint: A sana-lightning checkpoint or diffusers directory (a foreign one needs text_encoder,
            autoencoder and image_size).
        out_dir: Where importance.json and importance.png go.
        shards: Calibration shards (brace pattern, glob or comma list).
        batch_size: Calibration samples.
        num_sigmas: Noise levels, those the checkpoint's sampler visits in that many steps.
        loss_delta: Also measure the loss increase when each block alone is skipped.
        seed: Seeds the calibration batch and its noise.
        text_encoder: Local text encoder directory of a foreign diffusers model.
        autoencoder: Local autoencoder directory of a foreign diffusers model.
        image_size: Image size of a foreign diffusers model.
        trainer: Device and precision (first device; --trainer.accelerator cuda --trainer.precision bf16-mixed).
    """
    module = _load(checkpoint, text_encoder, autoencoder, image_size)
    importance = _measure_on_devices(module, shards, batch_size, num_sigmas, loss_delta, seed, trainer)
    _write_importance(importance, Path(out_dir), {"checkpoint": checkpoint})
    return importance


def prune_checkpoint(
    checkpoint: str,
    out_dir: str,
    target_depth: int,
    criterion: str = "cosine",
    protect_ends: bool = False,
    shards: str = "data/shapes/val-*.tar",
    batch_size: int = 32,
    num_sigmas: int = 10,
    seed: int = 0,
    text_encoder: str | None = None,
    autoencoder: str | None = None,
    image_size: int | None = None,
    trainer: TrainerOptions | None = None,
) -> Path:
    """Remove the least important blocks down to `target_depth`; write a diffusers directory and `prune.json`
    (plus the importance report). The weights written are the checkpoint's, whatever the precision.

    Args:
        checkpoint: A sana-lightning checkpoint or diffusers directory (a foreign one needs text_encoder,
            autoencoder and image_size).
        out_dir: The diffusers directory to write.
        target_depth: Blocks to keep.
        criterion: cosine, angular or loss_delta importance; or the baselines random and last.
        protect_ends: Never remove the first and last block.
        shards: Calibration shards (brace pattern, glob or comma list).
        batch_size: Calibration samples.
        num_sigmas: Noise levels, those the checkpoint's sampler visits in that many steps.
        seed: Seeds the calibration batch, its noise and the random criterion.
        text_encoder: Local text encoder directory of a foreign diffusers model.
        autoencoder: Local autoencoder directory of a foreign diffusers model.
        image_size: Image size of a foreign diffusers model.
        trainer: Device and precision of the importance measurement (its first device).
    """
    module = _load(checkpoint, text_encoder, autoencoder, image_size)
    depth = len(module.transformer.transformer_blocks)
    importance = None
    if criterion in METRICS:
        loss_delta = criterion == "loss_delta"
        importance = _measure_on_devices(module, shards, batch_size, num_sigmas, loss_delta, seed, trainer)
    removed = select_blocks(depth, target_depth, criterion, importance, protect_ends, seed)
    out = Path(out_dir)
    pruned = prune(module.transformer, removed)
    record = {
        "checkpoint": checkpoint,
        "criterion": criterion,
        "removed": removed,
        "kept": [i for i in range(depth) if i not in removed],
    }
    with atomic_directory(out, tensor_bytes(pruned)) as staging:
        pruned.save_pretrained(staging)
        (staging / "prune.json").write_text(json.dumps(record, indent=2))
        if importance is not None:
            _write_importance(importance, staging, record, removed)
    print(f"removed blocks {removed} ({criterion}): {depth} -> {target_depth} blocks in {out}")
    return out
