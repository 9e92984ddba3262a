"""Reading transformers out of checkpoints: our Lightning `.ckpt`, a consolidated (FSDP) file, or diffusers."""

import glob
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from diffusers import SanaTransformer2DModel

from sana_lightning.atomic import atomic_directory, save_atomic, tensor_bytes
from sana_lightning.presets import load_transformer, transformer_folder

TRAIN_COMMAND = "python -m sana_lightning.cli fit --config configs/base.yaml"


def resolve_path(path: str) -> str:
    """`path`, or the newest file matching it when it is a glob (e.g. `runs/sana/version_*/checkpoints/last.ckpt`)."""
    if glob.has_magic(path):
        matches = sorted(glob.glob(path), key=os.path.getmtime)
        if not matches:
            raise FileNotFoundError(f"no checkpoint matches '{path}': train one first with `{TRAIN_COMMAND}`")
        return matches[-1]
    if not Path(path).exists():
        raise FileNotFoundError(
            f"'{path}' does not exist: give a sana-lightning checkpoint (train one with `{TRAIN_COMMAND}`) "
            "or a diffusers SanaTransformer2DModel directory"
        )
    return path


def read_checkpoint(path: str | Path) -> dict:
    """A `torch.save` file's contents (on the CPU, memory-mapped); a truncated or corrupt file is a one-line error."""
    with open(path, "rb") as file:
        if not zipfile.is_zipfile(file):
            raise _unreadable(path, "not a complete zip archive")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise _unreadable(path, str(error).splitlines()[0][:120]) from error


def _unreadable(path: str | Path, reason: str) -> ValueError:
    return ValueError(
        f"'{path}' is not a readable checkpoint ({reason}): it is truncated or corrupt; "
        "use another checkpoint (e.g. an earlier one of the same run)"
    )


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A distributed (DCP) checkpoint folder, as FSDP strategies save: one shard file per rank plus `.metadata`."""
    return Path(path, ".metadata").is_file()


def _gather(sharded: str, workdir: str) -> dict:
    """A sharded (FSDP) checkpoint folder as one checkpoint dict: its weights, `transformer_config` and
    hyper-parameters (gathered through a file in `workdir`)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(sharded, f"{workdir}/gathered.pt")
    gathered = torch.load(f"{workdir}/gathered.pt", map_location="cpu", weights_only=True)
    meta = torch.load(Path(sharded, "meta.pt"), map_location="cpu", weights_only=False)
    return {**meta, "state_dict": gathered.get("state_dict", gathered.get("model"))}  # ModelParallel / FSDP key


def consolidate_checkpoint(sharded: str, output: str | None = None) -> Path:
    """Gather a sharded (FSDP) checkpoint folder into one file that growth, pruning and sampling read: its weights,
    `transformer_config` and hyper-parameters (resume training from the folder itself; it keeps the optimizer)."""
    sharded = resolve_path(sharded)
    if not is_sharded_checkpoint(sharded):
        raise ValueError(f"'{sharded}' is not a sharded checkpoint folder (no .metadata): it needs no consolidation")
    out = Path(output or f"{_stem(sharded)}-consolidated.ckpt")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        save_atomic(_gather(sharded, tmp), out)
    return out


def _stem(path: str) -> str:
    return str(path).rstrip("/").removesuffix(".ckpt")


def consolidate_safetensors(checkpoint: str, output: str | None = None, weights: str = "ema") -> Path:
    """Write the transformer (`weights`: ema or raw) of a sharded folder or a checkpoint file as a diffusers
    directory (safetensors): the lazily read source of a `sharding.meta_init` run."""
    checkpoint = resolve_path(checkpoint)
    if Path(checkpoint).is_dir() and not is_sharded_checkpoint(checkpoint):
        raise ValueError(
            f"'{checkpoint}' is a directory but no sharded checkpoint: give a sharded folder or a .ckpt file"
        )
    out = Path(output or f"{_stem(checkpoint)}-{weights}-diffusers")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        contents = _gather(checkpoint, tmp) if is_sharded_checkpoint(checkpoint) else read_checkpoint(checkpoint)
        model = _checkpoint_transformer(contents, weights, checkpoint)
    with atomic_directory(out, tensor_bytes(model)) as staging:
        model.save_pretrained(staging)
    return out


def consolidate(checkpoint: str, output: str | None = None, format: str = "ckpt", weights: str | None = None) -> Path:
    """Gather a sharded (FSDP) checkpoint folder into one `.ckpt` file, or write a checkpoint's transformer as a
    diffusers directory of safetensors (what `sharding.meta_init` runs read lazily, each rank only its shard).

    Args:
        checkpoint: The sharded checkpoint folder (format ckpt), or a sharded folder or .ckpt file (safetensors).
        output: The file or directory to write (default: <folder>-consolidated.ckpt, <checkpoint>-<weights>-diffusers).
        format: ckpt (one file: weights, optimizer-free, hyper-parameters) or safetensors (the transformer alone).
        weights: safetensors only: ema (default; falls back to the trained weights) or raw.
    """
    if format not in ("ckpt", "safetensors"):
        raise ValueError(f"unknown format '{format}': use ckpt or safetensors")
    if format == "ckpt" and weights is not None:
        raise ValueError("--weights picks the transformer written by --format safetensors; a .ckpt keeps both")
    if format == "ckpt":
        out = consolidate_checkpoint(checkpoint, output)
    else:
        out = consolidate_safetensors(checkpoint, output, weights or "ema")
    print(f"consolidated {checkpoint} -> {out}")
    return out


def load_checkpoint_transformer(path: str, weights: str = "ema") -> SanaTransformer2DModel:
    """The transformer stored in a checkpoint file or diffusers directory.

    Files hold `transformer_config` and a `state_dict` with `transformer.` (trained) and, if EMA was on,
    `ema.module.` (averaged) weights; `weights` picks `ema` (falling back to the trained weights) or `raw`.
    """
    path = _source_path(path)
    if Path(path).is_dir():
        return _finite(load_transformer(path), path)
    return _checkpoint_transformer(read_checkpoint(path), weights, path)


def load_transformer_config(path: str) -> dict:
    """The `SanaTransformer2DModel` config of a checkpoint file or diffusers directory, without its weights (a
    checkpoint file is memory-mapped: only its pickled metadata is read)."""
    path = _source_path(path)
    if Path(path).is_dir():
        return dict(SanaTransformer2DModel.load_config(transformer_folder(path)))
    return _checked(read_checkpoint(path), path)["transformer_config"]


def checkpoint_weights(checkpoint: dict, weights: str = "ema") -> dict[str, torch.Tensor]:
    """A checkpoint's transformer weights by their `SanaTransformer2DModel` names: `ema` (falls back to the trained
    weights) or `raw`."""
    state = checkpoint["state_dict"]
    prefix = "ema.module." if weights == "ema" and any(k.startswith("ema.module.") for k in state) else "transformer."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _source_path(path: str) -> str:
    path = resolve_path(path)
    if is_sharded_checkpoint(path):
        raise ValueError(
            f"'{path}' is a sharded checkpoint: consolidate it first with "
            f"`python -m sana_lightning.cli consolidate {path}` and give the file it writes"
        )
    return path


def _checked(checkpoint: dict, path: str) -> dict:
    if "transformer_config" not in checkpoint:
        raise ValueError(
            f"'{path}' holds no transformer_config: give a sana-lightning checkpoint or diffusers directory"
        )
    return checkpoint


def _checkpoint_transformer(checkpoint: dict, weights: str, path: str) -> SanaTransformer2DModel:
    model = SanaTransformer2DModel.from_config(_checked(checkpoint, path)["transformer_config"])
    model.load_state_dict(checkpoint_weights(checkpoint, weights))
    return _finite(model, path)


def _finite(model: SanaTransformer2DModel, path: str) -> SanaTransformer2DModel:
    """`model`, refused when a weight is NaN or infinite (a diverged run saves such checkpoints)."""
    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise ValueError(f"'{path}' holds non-finite weights (NaN/Inf in {bad[0]}{more}): use an earlier checkpoint")
    return model
