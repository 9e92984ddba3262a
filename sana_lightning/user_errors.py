"""Errors for people: one line per failure, the outermost message that names a file or option."""

import errno
import re
from argparse import ArgumentError
from pathlib import Path

import yaml

_USER_ERRORS = (ValueError, FileNotFoundError, ArgumentError)
"""The errors this project raises for people: their message is the whole line, without the type name."""

_NAMES_PATH_OR_OPTION = re.compile(r"'[^'\s]*[/.][^'\s]*'|--\w")
"""A quoted path (`'runs/last.ckpt'`) or an option (`--judge_path`) in a message."""

_OS_ERROR_FIXES = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "check its permissions or write elsewhere",
    errno.EPERM: "check its permissions or write elsewhere",
    errno.ENOTDIR: "part of the path is a file, not a directory",
    errno.EEXIST: "a file is in the way where a directory is needed",
    errno.ENOENT: "check the path",
}


def _line(error: BaseException) -> tuple[str, bool] | None:
    """`error` as one line and whether that line names a path or option; None for an empty or multi-line message."""
    if isinstance(error, OSError) and error.strerror and (error.filename or error.errno in _OS_ERROR_FIXES):
        if error.filename and str(error.filename) in error.strerror:  # our own message (e.g. a full disk) says it all
            return error.strerror, True
        fix = _OS_ERROR_FIXES.get(error.errno)
        where = f"'{error.filename}': " if error.filename else ""
        return f"{where}{error.strerror} (errno {error.errno})" + (f": {fix}" if fix else ""), bool(error.filename)
    text = str(error).strip()
    if type(error).__name__ == "OutOfMemoryError":  # torch's device OOM: a model, a judge or a batch too large
        return (
            f"out of device memory ({text.splitlines()[0][:160]}): lower --batch_size or spread the work over more "
            "devices (--trainer.devices); what was written is kept and a rerun makes only what is missing"
        ), True
    if not text or "\n" in text:
        return None
    text = text if isinstance(error, _USER_ERRORS) else f"{type(error).__name__}: {text}"
    return text, bool(_NAMES_PATH_OR_OPTION.search(text))


def error_line(error: BaseException) -> str:
    """The outermost one-line message of `error`'s chain that names a path or option, else the outermost one."""
    chain = [error]
    while True:
        last = chain[-1]
        cause = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if cause is None or cause in chain:
            break
        chain.append(cause)
    lines = [line for line in map(_line, chain) if line]
    if not lines:
        return " ".join(f"{type(error).__name__}: {error}".split())
    return next((text for text, names in lines if names), lines[0][0])


def check_config_files(args: list[str]) -> None:
    """Each `--config FILE` exists and is valid YAML, and the first is a whole config (not an overlay such as
    `tiny.yaml` or `grow.yaml`, whose sections lack a `class_path`), else a one-line error naming the file."""
    given = zip(["", *args], args)  # (previous argument, argument)
    paths = [
        arg.removeprefix("--config=") for before, arg in given if before == "--config" or arg.startswith("--config=")
    ]
    for index, path in enumerate(paths):
        if not Path(path).exists():
            if Path(path).suffix in (".yaml", ".yml", ".json"):  # anything else may be inline YAML
                raise FileNotFoundError(f"config file '{path}' not found: check the --config path")
            continue
        try:
            config = yaml.safe_load(Path(path).read_text())
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark
            raise ValueError(
                f"config '{path}' line {mark.line + 1}, column {mark.column + 1}: {error.problem}: fix its YAML syntax"
            ) from error
        except yaml.YAMLError as error:
            raise ValueError(f"config '{path}' is not YAML ({str(error).splitlines()[0]}): fix it") from error
        sections = [config.get(k) for k in ("model", "data")] if index == 0 and isinstance(config, dict) else []
        if any(isinstance(v, dict) and "init_args" in v and "class_path" not in v for v in sections):
            raise ValueError(
                f"config '{path}' is an overlay: stack it on a whole config, e.g. "
                f"--config configs/base.yaml --config {path}"
            )
