"""FSDP2 on 2 CPU processes (gloo): the sharded run reproduces single-process training on the same global batches,
its sharded checkpoint consolidates to the same weights, and a sharded CLI run resumes from its checkpoint folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from resume_helpers import logged

from sana_lightning.checkpoints import consolidate_checkpoint, load_checkpoint_transformer

SCRIPT = Path(__file__).with_name("fsdp_train.py")
ROOT = Path(__file__).parents[1]


def _run(*args: str, cwd: Path = ROOT) -> None:
    """`python *args` importing this checkout's sana_lightning (not another one an editable install points to)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, shapes_dir, tmp_path_factory):
    """The same growth run (4 -> 6 blocks, AdamW, clipping, EMA) on 1 process and sharded over 2."""
    out = {}
    for devices in (1, 2):
        out[devices] = tmp_path_factory.mktemp(f"devices{devices}")
        _run(str(SCRIPT), str(tiny_checkpoint), f"{shapes_dir}/train-*.tar", str(out[devices]), f"--devices={devices}")
    return out


def test_sharded_training_matches_single_process_on_the_same_global_batch(runs):
    single, sharded = (json.loads((runs[d] / "result.json").read_text())["losses"] for d in (1, 2))
    assert len(single) == len(sharded) == 4
    assert single[0] != single[-1]  # the model trained
    torch.testing.assert_close(torch.tensor(sharded), torch.tensor(single), rtol=5e-5, atol=0)
    single_weights, sharded_weights = (torch.load(runs[d] / "weights.pt") for d in (1, 2))
    # atol 1e-4: the new blocks' to_q / to_k get ~zero gradients (their outputs start at zero), and Adam's
    # normalisation turns fp32 reduction-order noise there into lr-sized steps (seen: 3e-5 after 4 steps at lr 1e-3).
    for name in ("loss", "loss_ema"):  # trained and EMA weights
        for key, value in single_weights[name].items():
            torch.testing.assert_close(sharded_weights[name][key], value, rtol=1e-4, atol=1e-4, msg=f"{name} {key}")


def test_sharded_checkpoint_consolidates_to_the_trained_weights(runs):
    folder = runs[2] / "final.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2  # one shard per rank
    with pytest.raises(ValueError, match="consolidate it first"):
        load_checkpoint_transformer(str(folder))
    consolidated = consolidate_checkpoint(str(folder))
    weights = torch.load(runs[2] / "weights.pt")
    for name, choice in (("loss", "raw"), ("loss_ema", "ema")):
        model = load_checkpoint_transformer(str(consolidated), choice)
        assert model.config.num_layers == 6
        state = model.state_dict()
        assert state.keys() == weights[name].keys()
        assert all(torch.equal(state[k], v) for k, v in weights[name].items())


def test_sharded_cli_run_with_came_8bit_resumes_from_its_checkpoint_folder(shapes_dir, tmp_path):
    args = [
        "-m", "sana_lightning.cli", "fit",
        "--config", str(ROOT / "configs/base.yaml"),
        "--config", str(ROOT / "configs/tiny.yaml"),
        "--config", str(ROOT / "configs/came8bit.yaml"),
        "--config", str(ROOT / "configs/strategy/fsdp2.yaml"),
        "--model.init_args.optimizer.init_args.min_8bit_size=1024",
        "--data.class_path=sana_lightning.data.ShardDataModule",
        f"--data.init_args.train_shards={shapes_dir}/train-*.tar",
        f"--data.init_args.val_shards={shapes_dir}/val-*.tar",
        "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true",
    ]  # fmt: skip
    (tmp_path / "straight").mkdir()
    _run(*args, "--trainer.max_steps=8", cwd=tmp_path / "straight")
    _run(*args, "--trainer.max_steps=4", cwd=tmp_path)
    last = tmp_path / "runs/sana/version_0/checkpoints/last.ckpt"
    assert (last / ".metadata").is_file()
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]  # written beside, then renamed
    meta = torch.load(last / "meta.pt", weights_only=False)
    assert meta["global_step"] == 4 and meta["transformer_config"]["num_layers"] == 2
    _run(*args, "--trainer.max_steps=8", "--ckpt_path=last", cwd=tmp_path)  # continues version_0
    resumed = torch.load(last / "meta.pt", weights_only=False)
    assert resumed["global_step"] == 8
    straight = logged(tmp_path / "straight/runs/sana/version_0")["train/loss"]
    losses = logged(tmp_path / "runs/sana/version_0")["train/loss"]
    assert sorted(losses) == [4, 5, 6, 7]
    for step, loss in losses.items():
        assert loss == pytest.approx(straight[step], rel=1e-4)  # sharded sums: equal within fp tolerance
