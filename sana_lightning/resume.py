"""Resuming a run: which checkpoint `--ckpt_path last` means, and whether its settings are the config's."""

import glob
import math
import os
from pathlib import Path

import torch

from sana_lightning.checkpoints import is_sharded_checkpoint, read_checkpoint


def find_last_checkpoint(runs_root: str | Path) -> str:
    """The newest `last*.ckpt` (file, or folder when sharded) of any version of a run: `--ckpt_path last`."""
    candidates = glob.glob(str(Path(runs_root, "version_*", "checkpoints", "last*.ckpt")))
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no last checkpoint under '{runs_root}/version_*/checkpoints/': nothing to resume; "
            "train without --ckpt_path first, or give a checkpoint path"
        )
    return max(candidates, key=os.path.getmtime)


def run_version(checkpoint: str | Path, runs_root: str | Path) -> str | None:
    """The `version_N` folder of `runs_root` the checkpoint was written in, so the resumed run logs there too."""
    try:
        parts = Path(checkpoint).resolve().relative_to(Path(runs_root).resolve()).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 2 and parts[1] == "checkpoints" else None


def checkpoint_hparams(path: str | Path) -> dict:
    """The hyper-parameters a checkpoint (file or sharded folder) was trained with."""
    if is_sharded_checkpoint(path):
        return torch.load(Path(path, "meta.pt"), map_location="cpu", weights_only=True).get("hyper_parameters", {})
    return read_checkpoint(path).get("hyper_parameters", {})


def settings_differences(saved: dict, current: dict, prefix: str = "model.") -> list[str]:
    """`key: checkpoint X, config Y` for every setting that differs (nested settings by dotted key)."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += settings_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
    return differences


def repair_epoch_end_checkpoint(checkpoint: dict) -> None:
    """Make Lightning (2.6) resume a checkpoint written in `on_train_epoch_end` exactly where it was written.

    Lightning adds one to the logging step of every resumed checkpoint (right for those written before a step is
    counted, one too many here), and when that epoch ran no validation, it trains one batch too many in it (its epoch
    loop waits for a validation that never comes). Such a checkpoint is written after the epoch's last step, so the
    epoch is marked finished: the resumed run starts the next one. (Epoch-interval schedulers were not stepped yet at
    that point; this project's step every step.)"""
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit or fit["epoch_progress"]["total"]["processed"] != fit["epoch_progress"]["total"]["completed"] + 1:
        return
    fit["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
    if fit["epoch_loop.val_loop.batch_progress"]["total"]["completed"]:
        return
    for scope in ("total", "current"):
        fit["epoch_progress"][scope]["completed"] = fit["epoch_progress"][scope]["processed"]
    for name in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress"):
        fit[name]["current"] = dict.fromkeys(fit[name]["current"], 0)
    fit["epoch_loop.batch_progress"]["is_last_batch"] = False


def configured_learning_rates(module) -> list[float]:
    """The base learning rate of each parameter group that `module.configure_optimizers()` makes: a scheduler's
    `initial_lr` where it sets one (OneCycleLR starts from max_lr / div_factor), else the group's `lr`."""
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    return [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]


def learning_rate_differences(path: str | Path, module) -> list[str]:
    """`optimizer lr ...: checkpoint X, config Y` for each parameter group whose base learning rate in `module`'s
    config (`configured_learning_rates`) is not the one the checkpoint's optimizer was made with (a resume restores
    the optimizer, and with it the old rate)."""
    if is_sharded_checkpoint(path):
        return []  # the optimizer state is in the shards
    states = read_checkpoint(path).get("optimizer_states") or []
    if not states:
        return []
    configured = configured_learning_rates(module)
    saved = [group.get("initial_lr", group["lr"]) for group in states[0]["param_groups"]]
    return [
        f"optimizer lr (group {i}): checkpoint {old:g}, config {new:g}"
        for i, (old, new) in enumerate(zip(saved, configured))
        if not math.isclose(old, new, rel_tol=1e-9)
    ]
