"""A `fit` run writes only into its log directory (`runs/`): no samples/, checkpoints/ or lightning_logs/ in the cwd."""

from pathlib import Path

from sana_lightning.lightning_cli import SanaCLI

CONFIGS = Path(__file__).parents[1] / "configs"


def fit(shapes_dir: Path, *overrides: str) -> None:
    SanaCLI(
        args=[
            "fit",
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={CONFIGS / 'tiny.yaml'}",
            "--data.class_path=sana_lightning.data.ShardDataModule",
            f"--data.init_args.train_shards={shapes_dir}/train-*.tar",
            f"--data.init_args.val_shards={shapes_dir}/val-*.tar",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ]
    )


def written(cwd: Path) -> list[str]:
    return sorted(p.relative_to(cwd).as_posix() for p in cwd.rglob("*") if p.is_file())


def test_a_fast_dev_run_writes_nothing_outside_runs(shapes_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(shapes_dir, "--trainer.fast_dev_run=true")
    assert [f for f in written(tmp_path) if not f.startswith("runs/")] == []
    assert [f for f in written(tmp_path) if f.endswith(".png")] == []  # no TensorBoard run, so no samples


def test_a_run_writes_its_samples_and_checkpoints_under_its_log_dir(shapes_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(shapes_dir, "--trainer.max_steps=2")
    files = written(tmp_path)
    assert [f for f in files if not f.startswith("runs/")] == []
    assert "runs/sana/version_0/samples/step_0000002.png" in files  # SampleGrid draws at the end of training
    assert "runs/sana/version_0/checkpoints/last.ckpt" in files
