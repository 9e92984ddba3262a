"""Local model directories: checked before any `from_pretrained`, so a missing path never becomes a hub lookup."""

from pathlib import Path


def local_model_dir(path: str | Path, what: str, fix: str) -> str:
    """`path` if it is an existing directory; otherwise a one-line `FileNotFoundError` naming `what` and `fix`."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{what} '{path}' not found (local directories only, nothing is downloaded): {fix}")
    return str(path)
