"""One error path for people: every error reaching `cli.run()` is one line naming the file or option at fault."""

import errno
import json
from pathlib import Path

import pytest
import torch

from sana_lightning.cli import run


def error_line(monkeypatch, *argv) -> str:
    """The message `run()` exits with for the command line `argv`, checked to be one line without a traceback."""
    monkeypatch.setattr("sys.argv", ["sana-lightning", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        run()
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def truncated_checkpoint(tiny_checkpoint, tmp_path):
    path = tmp_path / "truncated.ckpt"
    data = tiny_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "command, option", [("generate", "--metadata={shapes}/metadata.jsonl"), ("grow", "6")], ids=["generate", "grow"]
)
def test_a_truncated_checkpoint_is_named(command, option, truncated_checkpoint, shapes_dir, tmp_path, monkeypatch):
    message = error_line(monkeypatch, command, truncated_checkpoint, tmp_path / "out", option.format(shapes=shapes_dir))
    assert message.startswith(f"error: '{truncated_checkpoint}' is not a readable checkpoint (not a complete zip")
    assert "it is truncated or corrupt; use another checkpoint" in message


def test_generate_refuses_non_finite_weights(tiny_checkpoint, shapes_dir, tmp_path, monkeypatch):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    for name, tensor in checkpoint["state_dict"].items():  # the trained and the EMA copy
        if name.endswith("proj_out.weight"):
            tensor[0, 0] = float("nan")
    path = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, path)
    message = error_line(monkeypatch, "generate", path, tmp_path / "out", f"--metadata={shapes_dir}/metadata.jsonl")
    assert message == (
        f"error: '{path}' holds non-finite weights (NaN/Inf in proj_out.weight): use an earlier checkpoint"
    )


def test_a_missing_judge_path_is_not_found_not_a_hub_lookup(tiny_checkpoint, shapes_dir, tmp_path, monkeypatch):
    message = error_line(
        monkeypatch,
        *("scale", tiny_checkpoint, tmp_path / "out", f"--prompts={shapes_dir}/metadata.jsonl"),
        *("--judge=vlm", "--judge_path=/nonexistent/judge"),
    )
    assert message.startswith("error: VLM judge path '/nonexistent/judge' not found (local directories only")
    assert "Repo id" not in message


def test_an_output_path_under_a_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "prompts"
    message = error_line(monkeypatch, "prompts", out / "metadata.jsonl")
    assert message == f"error: '{out}': Not a directory (errno 20): part of the path is a file, not a directory"


def test_a_full_disk_says_so(monkeypatch):
    message = error_line(monkeypatch, "prompts", "/dev/full")  # every write to /dev/full fails with ENOSPC
    assert message == "error: No space left on device (errno 28): the disk is full; free space or write elsewhere"


def test_the_outermost_message_naming_a_file_wins(monkeypatch):
    def unwritable():
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/read-only/out/0000.png")
        except PermissionError as error:
            raise RuntimeError("saving the images failed") from error

    monkeypatch.setattr("sana_lightning.cli.main", unwritable)
    assert error_line(monkeypatch) == (
        "error: '/read-only/out/0000.png': Permission denied (errno 13): check its permissions or write elsewhere"
    )

    def malformed():
        try:
            json.loads("{oops")
        except ValueError as error:
            raise ValueError("'prompts/metadata.jsonl' line 3 is not JSON: fix or delete that line") from error

    monkeypatch.setattr("sana_lightning.cli.main", malformed)
    assert error_line(monkeypatch) == "error: 'prompts/metadata.jsonl' line 3 is not JSON: fix or delete that line"
    monkeypatch.setattr("sana_lightning.cli.main", lambda: {}["steps"])
    assert error_line(monkeypatch) == "error: KeyError: 'steps'"


def test_a_judge_or_batch_too_large_for_the_device_names_the_fix(monkeypatch):
    def judge_out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nSee documentation for ...")

    monkeypatch.setattr("sana_lightning.cli.main", judge_out_of_memory)
    assert error_line(monkeypatch) == (
        "error: out of device memory (CUDA out of memory. Tried to allocate 2.00 GiB.): lower --batch_size or "
        "spread the work over more devices (--trainer.devices); what was written is kept and a rerun makes only "
        "what is missing"
    )


def test_a_yaml_syntax_error_names_the_stacked_config_file(tmp_path, monkeypatch):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("trainer:\n  max_steps: 2\n")
    second.write_text("trainer:\n  max_steps: 2\n  logger: a: b\n")
    message = error_line(monkeypatch, "fit", "--config", first, f"--config={second}")
    assert (
        message
        == f"error: config '{second}' line 3, column 12: mapping values are not allowed here: fix its YAML syntax"
    )


def test_an_overlay_config_alone_names_the_base_to_stack_it_on(monkeypatch):
    overlay = Path(__file__).parents[1] / "configs/grow.yaml"
    message = error_line(monkeypatch, "fit", "--config", overlay)
    assert message == (
        f"error: config '{overlay}' is an overlay: stack it on a whole config, e.g. --config configs/base.yaml "
        f"--config {overlay}"
    )


def test_a_missing_config_file_is_named(tmp_path, monkeypatch):
    message = error_line(monkeypatch, "fit", "--config", tmp_path / "missing.yaml")
    assert message == f"error: config file '{tmp_path / 'missing.yaml'}' not found: check the --config path"


def test_debug_keeps_the_traceback(truncated_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SANA_LIGHTNING_DEBUG", "1")
    monkeypatch.setattr("sys.argv", ["sana-lightning", "grow", str(truncated_checkpoint), str(tmp_path), "6"])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        run()
