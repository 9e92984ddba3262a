"""Checkpoints and exports are never half-written: a full disk leaves the previous version intact and says why."""

import errno
import io
import subprocess
import uuid
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError

from sana_lightning.atomic import AtomicCheckpointIO, atomic_directory, save_atomic
from sana_lightning.cli import main
from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.module import SanaFlowModule

REAL_TORCH_SAVE = torch.save


def _full_disk_torch_save(obj, file) -> None:
    """A `torch.save` that writes the first half of the real bytes, then finds the disk full."""
    buffer = io.BytesIO()
    REAL_TORCH_SAVE(obj, buffer)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_previous_file_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "model.ckpt"
    save_atomic({"weights": torch.zeros(10)}, target)
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", _full_disk_torch_save)
    with pytest.raises(OSError, match="no space left to write") as raised:
        save_atomic({"weights": torch.zeros(250_000)}, target)  # 1 MB of tensors
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert str(target) in str(raised.value) and "about 1.0 MB needed" in str(raised.value)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_the_temporary_file_is_written_in_the_destination_directory(tmp_path, monkeypatch):
    written = []

    def recording_save(obj, file) -> None:
        written.append(Path(file.name))
        REAL_TORCH_SAVE(obj, file)

    monkeypatch.setattr(torch, "save", recording_save)
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "runs" / "last.ckpt")
    assert written[0].parent == tmp_path / "runs" and written[0].name.startswith(".last.ckpt.tmp-")
    assert torch.load(tmp_path / "runs" / "last.ckpt") == {"step": 1}
    with pytest.raises(TypeError, match="storage_options"):  # as Lightning's TorchCheckpointIO
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "x.ckpt", storage_options={})


def test_fit_on_a_full_disk_raises_and_keeps_the_previous_last_checkpoint(shapes_dir, tmp_path, monkeypatch):
    saved_steps = []

    def second_save_fails(obj, file) -> None:
        saved_steps.append(obj["global_step"])
        (_full_disk_torch_save if len(saved_steps) == 2 else REAL_TORCH_SAVE)(obj, file)

    monkeypatch.setattr(torch, "save", second_save_fails)
    module = SanaFlowModule(preset="tiny", transformer={"num_layers": 1}, text_encoder={"max_length": 8})
    checkpoints = tmp_path / "checkpoints"
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(checkpoints, save_top_k=0, save_last=True, every_n_train_steps=1)
        ],
    )
    data = ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=2, batches_per_epoch=3, num_workers=0)
    with pytest.raises(OSError, match=r"no space left to write '.*last\.ckpt': about .* MB needed"):
        trainer.fit(module, data)
    assert saved_steps == [1, 2]
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 1


def test_export_on_a_full_disk_leaves_the_previous_export_and_no_partial_directory(
    tiny_checkpoint, tmp_path, monkeypatch
):
    out = tmp_path / "exported"
    main(["export", str(tiny_checkpoint), str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save_file = safetensors.torch.save_file

    def full_disk_save_file(tensors, filename, metadata=None) -> None:
        real_save_file(tensors, filename, metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:1000])
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_save_file)
    with pytest.raises(OSError, match=f"no space left to write '{out}': about .* MB needed"):
        main(["export", str(tiny_checkpoint), str(out), "--weights", "raw"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]


def test_a_failed_directory_write_leaves_a_new_target_absent(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "config.json").write_text("{}")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "config.json").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MB filesystem (needs permission to mount: root in a container with CAP_SYS_ADMIN)."""
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_real_full_filesystem_keeps_the_previous_file_and_directory(small_tmpfs):
    target = small_tmpfs / "model.ckpt"
    save_atomic({"weights": torch.ones(1000)}, target)
    with pytest.raises(OSError, match="no space left to write .* about 2.0 MB needed, [01].[0-9] MB free"):
        save_atomic({"weights": torch.zeros(500_000)}, target)
    assert torch.equal(torch.load(target)["weights"], torch.ones(1000))
    with atomic_directory(small_tmpfs / "exported") as staging:
        safetensors.torch.save_file({"weights": torch.ones(1000)}, staging / "model.safetensors")
    with pytest.raises(OSError, match="no space left to write"):
        with atomic_directory(small_tmpfs / "exported") as staging:
            safetensors.torch.save_file({"weights": torch.zeros(500_000)}, staging / "model.safetensors")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["exported", "model.ckpt"]
    exported = safetensors.torch.load_file(small_tmpfs / "exported" / "model.safetensors")
    assert torch.equal(exported["weights"], torch.ones(1000))
