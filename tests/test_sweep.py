"""Sweeps on Optuna: a grid or TPE over overrides on stacked configs, one `fit` per trial, trials shared by workers
through the study's database, a summary table of all trials."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna

from sana_lightning.cli import main

ROOT = Path(__file__).parents[1]
CONFIGS = [str(ROOT / "configs" / name) for name in ("base.yaml", "tiny.yaml")]


def shard_args(shapes_dir) -> list[str]:
    return [
        "--data.class_path=sana_lightning.data.ShardDataModule",
        f"--data.init_args.train_shards={shapes_dir}/train-*.tar",
        f"--data.init_args.val_shards={shapes_dir}/val-*.tar",
    ]


def test_sweep_runs_a_two_by_one_grid_and_summarises_it(shapes_dir, tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    grid = {"model.init_args.caption_dropout": [0.0, 0.5], "model.init_args.optimizer.init_args.lr": [1e-3]}
    fixed = ["--trainer.fast_dev_run=true", *shard_args(shapes_dir)]
    main(["sweep", json.dumps(CONFIGS), json.dumps(grid), "--name", "dropout", "--args", json.dumps(fixed)])
    rows = json.loads((tmp_path / "runs/dropout/summary.json").read_text())
    assert sorted(r["trial"] for r in rows) == [0, 1]
    assert sorted(r["run"] for r in rows) == sorted(
        f"trial{r['trial']}-caption_dropout={r['model.init_args.caption_dropout']:.4g},lr=0.001" for r in rows
    )
    assert sorted(r["model.init_args.caption_dropout"] for r in rows) == [0.0, 0.5]  # each grid point once
    assert all(r["state"] == "COMPLETE" and r["steps"] == 1 and math.isfinite(r["val/loss"]) for r in rows)
    assert rows[0]["train/loss"] != rows[1]["train/loss"]  # the override reached the model
    assert "| trial | run |" in (tmp_path / "runs/dropout/summary.md").read_text()
    # The pruning callback was in each trial's Trainer and reported val/loss from its callback_metrics.
    study = optuna.load_study(study_name="dropout", storage=f"sqlite:///{tmp_path}/runs/dropout/study.db")
    assert {t.number: t.intermediate_values for t in study.trials} == {r["trial"]: {0: r["val/loss"]} for r in rows}
    # Each trial runs as its own `fit` command line, not as `args` beside the sweep's command line.
    assert not [w for w in recwarn if "both args and command line arguments" in str(w.message)]


def test_a_failed_trial_is_recorded_with_its_error_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["sweep", json.dumps(CONFIGS), json.dumps({"trainer.max_steps": ["many", "lots"]}), "--name", "bad"])
    rows = json.loads((tmp_path / "runs/bad/summary.json").read_text())
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]
    assert all("max_steps" in r["error"] for r in rows)


def test_two_workers_share_one_tpe_study(shapes_dir, tmp_path):
    space = {"model.init_args.caption_dropout": [0.0, 0.25, 0.5]}
    fixed = ["--trainer.max_steps=1", "--data.init_args.batches_per_epoch=1", *shard_args(shapes_dir)]
    command = [sys.executable, "-m", "sana_lightning.cli", "sweep", json.dumps(CONFIGS), json.dumps(space)]
    command += ["--name", "tpe", "--save_dir", str(tmp_path / "runs"), "--sampler", "tpe", "--n_trials", "4"]
    command += ["--args", json.dumps(fixed)]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    workers = []
    for log in logs:
        with log.open("w") as out:
            workers.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    assert [worker.wait(timeout=300) for worker in workers] == [0, 0], "\n".join(log.read_text() for log in logs)
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{tmp_path}/runs/tpe/study.db")
    ran = [t for t in study.trials if "run" in t.user_attrs]
    assert sorted(t.number for t in ran) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ran)
    # Workers that count the study's trials at the same moment may create one too many: it runs nothing.
    assert all(t.state == optuna.trial.TrialState.PRUNED and not t.params for t in study.trials if t.number >= 4)
    versions = {p.name for p in (tmp_path / "runs/tpe").iterdir() if p.is_dir()}
    assert versions == {t.user_attrs["run"] for t in ran} and len(versions) == 4
    assert len({t.user_attrs["worker"] for t in ran}) == 2  # both workers ran trials
    rows = json.loads((tmp_path / "runs/tpe/summary.json").read_text())
    assert sorted(r["trial"] for r in rows if r["run"]) == [0, 1, 2, 3]
