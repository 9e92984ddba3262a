"""Exact resume from every kind of checkpoint: an uninterrupted run against runs killed (kill -9, SIGTERM, SIGUSR1)
at each kind of point and resumed. Train and validation losses (as logged to TensorBoard) and final weights are
compared exactly. The runs have 4 batches an epoch from 2 loader workers, validation every 2nd epoch, a warm-up
learning-rate schedule, EMA and gradient clipping: 16 steps."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from resume_helpers import logged

from sana_lightning.lightning_cli import SanaCLI

CONFIGS = Path(__file__).parents[1] / "configs"
ROOT = Path(__file__).parents[1]


def run_config(shapes_dir, signal_at: tuple[int, str] | None = None) -> str:
    """The runs' config: three kinds of checkpoint (epoch end, after validation, every 3 steps), `last.ckpt`."""
    kill = ""
    if signal_at:
        step, name = signal_at
        kill = f"\n    - {{class_path: resume_helpers.SignalAt, init_args: {{step: {step}, signal_name: {name}}}}}"
    return (
        f"""
model:
  init_args:
    lr_scheduler:
      class_path: torch.optim.lr_scheduler.LinearLR
      init_args: {{start_factor: 0.2, total_iters: 10}}
data:
  init_args: {{root: {shapes_dir}, batch_size: 8, batches_per_epoch: 4, val_batches: 1, num_workers: 2}}
trainer:
  max_steps: 16
  check_val_every_n_epoch: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - {{class_path: ModelCheckpoint, init_args: {{save_on_train_epoch_end: true, save_top_k: -1, save_last: true}}}}
    - {{class_path: ModelCheckpoint, init_args: {{monitor: val/loss, save_top_k: -1, filename: "val-{{step}}"}}}}
    - {{class_path: ModelCheckpoint, init_args: {{every_n_train_steps: 3, save_top_k: -1, save_last: true,
                                                 filename: "every-{{step}}"}}}}"""
        + kill
    )


def config_args(tmp_path, shapes_dir, name="run.yaml", signal_at=None) -> list[str]:
    path = tmp_path / name
    path.write_text(run_config(shapes_dir, signal_at))
    return ["fit", f"--config={CONFIGS / 'base.yaml'}", f"--config={CONFIGS / 'tiny.yaml'}", f"--config={path}"]


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory):
    """Start the interrupted runs (subprocesses), run the uninterrupted one meanwhile, wait for them."""
    root = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    interrupted = {"kill": (14, "SIGKILL"), "sigterm": (7, "SIGTERM"), "sigusr1": (7, "SIGUSR1")}
    processes = {}
    for name, signal_at in interrupted.items():
        (root / name).mkdir()
        args = config_args(root / name, shapes_dir, signal_at=signal_at)
        command = [sys.executable, "-m", "sana_lightning.cli", *args]
        processes[name] = subprocess.Popen(command, cwd=root / name, env=env, stderr=subprocess.PIPE, text=True)
    (root / "straight").mkdir()
    cwd = os.getcwd()
    os.chdir(root / "straight")
    try:
        straight = SanaCLI(args=config_args(root / "straight", shapes_dir))
    finally:
        os.chdir(cwd)
    returncodes = {name: (p.wait(), p.stderr.read()) for name, p in processes.items()}
    assert returncodes["kill"][0] == -9, returncodes["kill"][1][-2000:]
    for name, status in (("sigterm", 143), ("sigusr1", 138)):
        assert returncodes[name][0] == status, returncodes[name][1][-2000:]
        assert "stopped by a signal at step 7" in returncodes[name][1]
    return root, logged(root / "straight/runs/sana/version_0"), weights(straight.model)


def resume(root: Path, shapes_dir, scenario: str, cwd: Path, ckpt_path: str):
    """Resume in-process from `ckpt_path` (run from `cwd`); returns the run folder it logged to and the module."""
    args = config_args(root, shapes_dir, name=f"{scenario}.yaml") + [f"--ckpt_path={ckpt_path}"]
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        cli = SanaCLI(args=args)
    finally:
        os.chdir(previous)
    return cwd / cli.trainer.logger.log_dir, cli.model


# (scenario, interrupted run, checkpoint it resumes from, first step the resumed run makes)
KINDS = [
    ("epoch_end_without_validation", "kill", "epoch=0-step=4.ckpt", 5),
    ("after_validation", "kill", "val-step=8.ckpt", 9),
    ("epoch_end_after_validation", "kill", "epoch=1-step=8.ckpt", 9),
    ("every_n_steps_on_an_epochs_last_batch", "kill", "every-step=12.ckpt", 13),
    ("mid_epoch", "kill", "every-step=6.ckpt", 7),
]


@pytest.mark.parametrize("scenario, source, checkpoint, first_step", KINDS, ids=[k[0] for k in KINDS])
def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(
    runs, shapes_dir, tmp_path, scenario, source, checkpoint, first_step
):
    root, straight, straight_weights = runs
    path = root / source / "runs/sana/version_0/checkpoints" / checkpoint
    run_dir, module = resume(root, shapes_dir, scenario, tmp_path, str(path))
    assert run_dir.parent == tmp_path / "runs/sana"  # the checkpoint is not of this folder's runs: a new version
    resumed = logged(run_dir)
    assert sorted(resumed["train/loss"]) == list(range(first_step - 1, 16))  # Lightning logs step s at s - 1
    assert resumed["train/loss"] == {s: v for s, v in straight["train/loss"].items() if s >= first_step - 1}
    assert resumed["val/loss"] == {s: v for s, v in straight["val/loss"].items() if s >= first_step - 1}
    for key, value in weights(module).items():
        assert torch.equal(value, straight_weights[key]), key


@pytest.mark.parametrize("source", ["sigterm", "sigusr1", "kill"])
def test_resume_with_ckpt_path_last_after_a_signal_or_a_kill(runs, shapes_dir, source):
    """`--ckpt_path last` after kill -9 during step 14 (last.ckpt: the end of epoch 2, step 12) or a preemption
    signal during step 7 (its checkpoint at the end of step 7, mid-epoch) continues the run in its own version."""
    root, straight, straight_weights = runs
    first_step = 13 if source == "kill" else 8
    run_dir, module = resume(root, shapes_dir, f"last-{source}", root / source, "last")
    assert run_dir == root / source / "runs/sana/version_0"
    resumed = logged(run_dir)
    assert resumed["train/loss"] == {s: v for s, v in straight["train/loss"].items() if s >= first_step - 1}
    assert resumed["val/loss"] == {s: v for s, v in straight["val/loss"].items() if s >= first_step - 1}
    for key, value in weights(module).items():
        assert torch.equal(value, straight_weights[key]), key


def run_cli(monkeypatch, cwd: Path, args: list[str]) -> str:
    """`python -m sana_lightning.cli ARGS` in `cwd` through `run()`: the one-line error it exits with."""
    from sana_lightning.cli import run

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["sana_lightning.cli", *args])
    with pytest.raises(SystemExit) as exit_info:
        run()
    return str(exit_info.value.code)


def test_ckpt_path_last_without_a_last_checkpoint_is_a_one_line_error(shapes_dir, tmp_path, monkeypatch):
    message = run_cli(monkeypatch, tmp_path, config_args(tmp_path, shapes_dir) + ["--ckpt_path=last"])
    assert message.startswith("error: --ckpt_path last: no last checkpoint under 'runs/sana/version_*/checkpoints/'")
    assert not (tmp_path / "runs").exists()  # nothing trained from scratch


def test_resuming_with_other_model_settings_lists_them_unless_told_to_take_the_checkpoints(
    runs, shapes_dir, tmp_path, monkeypatch
):
    root = runs[0]
    checkpoint = root / "kill/runs/sana/version_0/checkpoints/epoch=0-step=4.ckpt"
    args = config_args(tmp_path, shapes_dir) + [f"--ckpt_path={checkpoint}", "--trainer.max_steps=5"]
    changed = ["--model.init_args.preset=small", "--model.init_args.ema_decay=0.5"]
    lr = ["--model.init_args.optimizer.init_args.lr=0.001"]
    message = run_cli(monkeypatch, tmp_path, args + changed + lr)
    assert f"error: --ckpt_path '{checkpoint}' was trained with other settings (" in message
    assert "model.ema_decay: checkpoint 0.9, config 0.5; model.preset: checkpoint 'tiny', config 'small'" in message
    assert "optimizer lr (group 0): checkpoint 0.0003, config 0.001" in message
    assert "--resume_with_checkpoint_settings true" in message and not (tmp_path / "runs").exists()
    monkeypatch.chdir(tmp_path)
    cli = SanaCLI(args=args + changed + ["--resume_with_checkpoint_settings=true"])
    assert cli.model.hparams.preset == "tiny" and cli.model.hparams.ema_decay == 0.9
    assert cli.trainer.global_step == 5


def test_validating_a_checkpoint_ignores_the_training_stream_layout(runs, shapes_dir, tmp_path, monkeypatch):
    """Only `fit` restores the data position: `validate` with other loader workers is fine."""
    checkpoint = runs[0] / "kill/runs/sana/version_0/checkpoints/epoch=1-step=8.ckpt"
    args = config_args(tmp_path, shapes_dir) + ["--data.init_args.num_workers=0", f"--ckpt_path={checkpoint}"]
    monkeypatch.chdir(tmp_path)
    cli = SanaCLI(args=["validate", *args[1:]])
    assert cli.trainer.callback_metrics["val/loss"] > 0


def test_a_scheduler_that_sets_the_learning_rate_resumes_with_its_own_config_and_a_changed_peak_is_named(tmp_path):
    """OneCycleLR starts from max_lr / div_factor (`initial_lr`), not the optimizer's lr: resuming with the same config
    must pass the learning-rate check; another max_lr must be named."""
    from functools import partial

    from sana_lightning.module import SanaFlowModule
    from sana_lightning.resume import configured_learning_rates, learning_rate_differences

    def module(max_lr: float) -> SanaFlowModule:
        one_cycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=max_lr, total_steps=10, div_factor=10)
        return SanaFlowModule(preset="tiny", optimizer=partial(torch.optim.AdamW, lr=max_lr), lr_scheduler=one_cycle)

    trained = module(1e-3).configure_optimizers()
    for _ in range(3):
        trained["optimizer"].step()
        trained["lr_scheduler"]["scheduler"].step()
    path = tmp_path / "step3.ckpt"
    torch.save({"optimizer_states": [trained["optimizer"].state_dict()]}, path)
    assert configured_learning_rates(module(1e-3)) == [pytest.approx(1e-4)]
    assert learning_rate_differences(path, module(1e-3)) == []
    assert learning_rate_differences(path, module(2e-3)) == ["optimizer lr (group 0): checkpoint 0.0001, config 0.0002"]


def test_a_one_cycle_schedule_shorter_than_the_run_fails_at_the_start_and_a_longer_one_warns(tmp_path):
    """report.yaml's `total_steps: ${trainer.max_steps}` is fixed when the file is read, before a command-line
    `--trainer.max_steps`: a shorter schedule would fail at its last step, a longer one would never anneal."""
    from functools import partial

    from sana_lightning.module import SanaFlowModule

    def fit(total_steps: int, max_steps: int) -> SanaFlowModule:
        one_cycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-3, total_steps=total_steps)
        module = SanaFlowModule(preset="tiny", optimizer=partial(torch.optim.AdamW, lr=1e-3), lr_scheduler=one_cycle)
        trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
        module.trainer = trainer
        return module.configure_optimizers()

    with pytest.raises(ValueError, match="ends at step 3, before max_steps 5: set --model.init_args.lr_scheduler"):
        fit(3, 5)
    with pytest.warns(UserWarning, match="runs 8 steps but training stops at 5: set .*total_steps 5"):
        fit(8, 5)
    assert fit(5, 5)["lr_scheduler"]["scheduler"].total_steps == 5
