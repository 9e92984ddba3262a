"""Lightning CLI sweeps: a grid of overrides on stacked configs, one run each, a summary table of final metrics."""

import json
import math
from pathlib import Path

from sana_lightning.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"


def test_sweep_runs_a_two_by_one_grid_and_summarises_it(shapes_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = {"model.init_args.caption_dropout": [0.0, 0.5], "model.init_args.optimizer.init_args.lr": [1e-3]}
    fixed = [
        "--trainer.fast_dev_run=true",
        "--data.class_path=sana_lightning.data.ShardDataModule",
        f"--data.init_args.train_shards={shapes_dir}/train-*.tar",
        f"--data.init_args.val_shards={shapes_dir}/val-*.tar",
    ]
    main(
        [
            "sweep",
            json.dumps([str(CONFIGS / "base.yaml"), str(CONFIGS / "tiny.yaml")]),
            json.dumps(grid),
            "--name", "dropout",
            "--args", json.dumps(fixed),
        ]
    )  # fmt: skip
    rows = json.loads((tmp_path / "runs/dropout/summary.json").read_text())
    assert [r["run"] for r in rows] == ["caption_dropout=0.0,lr=0.001", "caption_dropout=0.5,lr=0.001"]
    assert [r["model.init_args.caption_dropout"] for r in rows] == [0.0, 0.5]
    assert all("error" not in r and r["steps"] == 1 and math.isfinite(r["val/loss"]) for r in rows)
    assert rows[0]["train/loss"] != rows[1]["train/loss"]  # the override reached the model
    assert "| run |" in (tmp_path / "runs/dropout/summary.md").read_text()
