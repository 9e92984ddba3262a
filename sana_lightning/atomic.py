"""Atomic writes: a temporary name in the destination directory, fsynced, then renamed over the target.

The rename never crosses a filesystem, so a crash or a full disk leaves the previous file or directory as it was;
a full disk is an `OSError(ENOSPC)` naming the path, the bytes needed and the bytes free.
"""

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from fsspec.utils import get_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_MESSAGES = tuple(os.strerror(code) for code in NO_SPACE)  # errors without errno (safetensors) carry these


def temporary_path(path: str | Path, kind: str = "tmp") -> Path:
    """A hidden name beside `path` (same directory, so renaming it onto `path` is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a module or a nested dict / list / tuple (the bulk of a checkpoint's size)."""
    if isinstance(obj, torch.nn.Module):
        return tensor_bytes(obj.state_dict())
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def is_no_space(error: BaseException | None) -> bool:
    """Whether `error` or an exception it was raised from is a full disk or quota (torch.save wraps it)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        if any(message in str(error) for message in NO_SPACE_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def no_space_error(path: str | Path, needed: int) -> OSError:
    """The error of a write to `path` that ran out of space, with the bytes it needs and those free."""
    existing = next(p for p in [Path(path).absolute(), *Path(path).absolute().parents] if p.exists())
    free = shutil.disk_usage(existing).free
    return OSError(
        errno.ENOSPC,
        f"no space left to write '{path}': about {needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free on its "
        "filesystem; free some space or write elsewhere"
        + (" (the previous version is untouched)" if Path(path).exists() else ""),
        str(path),
    )


def fsync_path(path: str | Path) -> None:
    """Flush a file, or the entries (renames) of a directory, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(path: str | Path) -> None:
    """Flush every file and directory under `path` to disk."""
    for root, _, files in os.walk(path):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any], needed: int = 0, durable: bool = True) -> None:
    """`write(file)` into a temporary file beside `path`, then renamed onto `path`: readers see the old or the new
    file, never part of one. `durable` fsyncs the file and its directory (checkpoints); a full disk is an error
    naming `path` and the bytes `needed`."""
    path = Path(path)
    staging = temporary_path(path)
    try:
        with open(staging, "wb") as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException as error:
        written = staging.stat().st_size if staging.exists() else 0
        staging.unlink(missing_ok=True)
        if is_no_space(error):
            raise no_space_error(path, max(needed, written)) from error
        raise
    if durable:
        fsync_path(path.parent)


def save_atomic(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)` through a temporary file beside `path`: fsynced, then renamed onto `path`."""
    write_atomic(path, lambda file: torch.save(obj, file), needed=tensor_bytes(obj))


def directory_bytes(path: str | Path) -> int:
    """Bytes of the files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def replace_directory(staging: str | Path, path: str | Path) -> None:
    """Put the finished directory `staging` at `path`: an existing `path` is moved aside, then deleted."""
    staging, path = Path(staging), Path(path)
    old = temporary_path(path, "old") if path.exists() or path.is_symlink() else None
    if old is not None:
        os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    fsync_path(path.parent)
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


@contextmanager
def atomic_directory(path: str | Path, needed: int = 0) -> Iterator[Path]:
    """Yield an empty directory beside `path` to write into (e.g. with `save_pretrained`); on success it is fsynced
    and replaces `path`, on failure it is deleted and an existing `path` is left as it was. `needed`: the bytes the
    output is expected to take, for the error of a full disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        fsync_tree(staging)
    except BaseException as error:
        written = directory_bytes(staging)
        shutil.rmtree(staging, ignore_errors=True)
        if is_no_space(error):
            raise no_space_error(path, max(needed, written)) from error
        raise
    replace_directory(staging, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` writing local checkpoints with `save_atomic` (Lightning's own atomic save puts
    the temporary file in the system temp directory, and a rename across filesystems is a copy)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            # Remote stores keep fsspec's transaction; `storage_options` gets the parent's TypeError.
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_atomic(checkpoint, path)
