"""Reading transformers out of checkpoints: our Lightning `.ckpt`, a consolidated (FSDP) file, or diffusers."""

import glob
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from diffusers import SanaTransformer2DModel

from sana_lightning.atomic import save_atomic
from sana_lightning.presets import load_transformer

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


def consolidate_checkpoint(sharded: str, output: str | None = None) -> Path:
    """Gather a sharded (FSDP) checkpoint folder into one file that growth, pruning and sampling read: its weights,
    `transformer_config` and hyper-parameters (resume training from the folder itself; it keeps the optimizer)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    sharded = resolve_path(sharded)
    if not is_sharded_checkpoint(sharded):
        raise ValueError(f"'{sharded}' is not a sharded checkpoint folder (no .metadata): it needs no consolidation")
    out = Path(output or f"{str(sharded).rstrip('/').removesuffix('.ckpt')}-consolidated.ckpt")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        dcp_to_torch_save(sharded, f"{tmp}/gathered.pt")
        gathered = torch.load(f"{tmp}/gathered.pt", map_location="cpu", weights_only=True)
    meta = torch.load(Path(sharded, "meta.pt"), map_location="cpu", weights_only=False)
    state = gathered.get("state_dict", gathered.get("model"))  # ModelParallelStrategy / FSDPStrategy key
    save_atomic({**meta, "state_dict": state}, out)
    return out


def consolidate(checkpoint: str, output: str | None = None) -> Path:
    """Gather a sharded (FSDP) checkpoint folder into one `.ckpt` file.

    Args:
        checkpoint: The sharded checkpoint folder.
        output: The file to write (default: <folder>-consolidated.ckpt).
    """
    out = consolidate_checkpoint(checkpoint, output)
    print(f"consolidated {checkpoint} -> {out}")
    return out


def load_checkpoint_transformer(path: str, weights: str = "ema") -> SanaTransformer2DModel:
    """The transformer stored in a checkpoint file or diffusers directory.

    Files hold `transformer_config` and a `state_dict` with `transformer.` (trained) and, if EMA was on,
    `ema.module.` (averaged) weights; `weights` picks `ema` (falling back to the trained weights) or `raw`.
    """
    path = resolve_path(path)
    if is_sharded_checkpoint(path):
        raise ValueError(
            f"'{path}' is a sharded checkpoint: consolidate it first with "
            f"`python -m sana_lightning.cli consolidate {path}` and give the file it writes"
        )
    if Path(path).is_dir():
        return _finite(load_transformer(path), path)
    checkpoint = read_checkpoint(path)
    if "transformer_config" not in checkpoint:
        raise ValueError(
            f"'{path}' holds no transformer_config: give a sana-lightning checkpoint or diffusers directory"
        )
    state = checkpoint["state_dict"]
    prefix = "ema.module." if weights == "ema" and any(k.startswith("ema.module.") for k in state) else "transformer."
    model = SanaTransformer2DModel.from_config(checkpoint["transformer_config"])
    model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return _finite(model, path)


def _finite(model: SanaTransformer2DModel, path: str) -> SanaTransformer2DModel:
    """`model`, refused when a weight is NaN or infinite (a diverged run saves such checkpoints)."""
    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise ValueError(f"'{path}' holds non-finite weights (NaN/Inf in {bad[0]}{more}): use an earlier checkpoint")
    return model
