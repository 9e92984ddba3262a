"""Lightning CLI sweeps on Optuna: `fit` trials over overrides of stacked configs, one TensorBoard version each.

The study lives in a database (SQLite in the sweep folder by default, any RDB URL with `--storage`), so workers on
many machines running the same `sweep` command share its trials; each writes the summary of all of them.
"""

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Literal
from unittest.mock import patch

import optuna
import sqlalchemy.exc
from optuna.study import MaxTrialsCallback
from optuna_integration import PyTorchLightningPruningCallback

from sana_lightning.atomic import write_atomic
from sana_lightning.lightning_cli import SanaCLI
from sana_lightning.tables import markdown_table


def _value(value) -> str:
    """A value as a command line option takes it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _choice(value):
    """Optuna stores scalar choices; lists and dicts (e.g. a `transformer` config) travel as their JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _suggest(trial: optuna.Trial, key: str, space: list | dict):
    """A value of `key`: one of a list, or in a range `{"low": 1e-4, "high": 1e-2, "log": true}` (int if both
    bounds are ints)."""
    if isinstance(space, list):
        return trial.suggest_categorical(key, [_choice(value) for value in space])
    if all(isinstance(space[bound], int) for bound in ("low", "high")):
        return trial.suggest_int(key, **space)
    return trial.suggest_float(key, **space)


def _create_study(**kwargs) -> optuna.Study:
    """`optuna.create_study`, retried: workers starting together race to create a new storage's tables
    (optuna issue #4621: `UNIQUE constraint failed: alembic_version.version_num`, `table ... already exists`)."""
    for delay in (1, 2, 4, None):
        try:
            return optuna.create_study(**kwargs)
        except sqlalchemy.exc.DatabaseError:
            if delay is None:
                raise
            time.sleep(delay)


def _row(trial: optuna.trial.FrozenTrial, metric: str) -> dict:
    attrs, reported = trial.user_attrs, trial.intermediate_values  # a pruned trial has its last reported metric
    return {
        "trial": trial.number,
        "run": attrs.get("run", ""),
        **trial.params,
        "state": trial.state.name,
        **({metric: reported[max(reported)]} if reported else {}),
        **attrs.get("metrics", {}),
        **{key: attrs[key] for key in ("steps", "worker", "error") if key in attrs},
    }


def run_sweep(
    configs: list[str],
    grid: dict[str, list | dict],
    name: str = "sweep",
    save_dir: str = "runs",
    args: list[str] | None = None,
    sampler: Literal["grid", "tpe"] = "grid",
    n_trials: int | None = None,
    metric: str = "val/loss",
    direction: Literal["minimize", "maximize"] = "minimize",
    pruner: Literal["median", "none"] | None = None,
    storage: str | None = None,
) -> list[dict]:
    """An Optuna study of `fit` trials over `grid`, shared by the workers running this command on one `storage`.

    A trial is `fit --config c1 --config c2 ... --key=value ... args`, logging to TensorBoard
    `save_dir/name/trial<number>-<key=value,...>`; a failed one is recorded with its error and the sweep goes on.
    At the end a worker writes the summary of all the study's trials (state, final metrics, steps) to
    `save_dir/name/summary.md` and `summary.json`; rerunning the command once the study is done rewrites it.

    Args:
        configs: Config files stacked as `--config` of every trial.
        grid: Dotted option -> list of values; with the tpe sampler, also a range `{"low": 1e-4, "high": 1e-2,
            "log": true}` (an int range if both bounds are ints).
        name: The sweep's folder under `save_dir` and its Optuna study name; a rerun continues the study.
        save_dir: Folder of the sweep folders.
        args: Options given to every trial, e.g. `["--trainer.max_steps=100"]`.
        sampler: `grid`: every combination of the lists once; `tpe`: Optuna's TPE over lists and ranges.
        n_trials: Trials of the study over all workers (default for grid: the number of combinations; tpe needs it).
        metric: The logged metric to optimise, reported at every validation for pruning.
        direction: Whether `metric` is to be minimized or maximized.
        pruner: `median` stops trials worse than the median of earlier ones at the same epoch; default: median for
            tpe, none for grid.
        storage: Database URL of the study, e.g. `postgresql://user:password@host/db` for workers on many machines
            (default: `sqlite:///<save_dir>/<name>/study.db`).
    """
    if sampler == "grid" and not all(isinstance(space, list) for space in grid.values()):
        raise ValueError("the grid sampler takes lists of values; ranges need --sampler tpe")
    if n_trials is None and sampler == "tpe":
        raise ValueError("the tpe sampler needs --n_trials (the total over all workers)")
    out = Path(save_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    grid_space = {key: [_choice(value) for value in values] for key, values in grid.items()}
    median = pruner == "median" or (pruner is None and sampler == "tpe")
    n_trials = n_trials or math.prod(len(values) for values in grid.values())
    study = _create_study(
        storage=storage or f"sqlite:///{out.resolve() / 'study.db'}",
        study_name=name,
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.GridSampler(grid_space) if sampler == "grid" else optuna.samplers.TPESampler(),
        pruner=optuna.pruners.MedianPruner() if median else optuna.pruners.NopPruner(),
    )

    def objective(trial: optuna.Trial) -> float:
        if trial.number >= n_trials:  # workers counted the study's trials at once and took one too many: run nothing
            trial.study.stop()
            raise optuna.TrialPruned(f"the study already has its {n_trials} trials")
        values = {key: _suggest(trial, key, space) for key, space in grid.items()}
        short = (f"{v:.4g}" if isinstance(v, float) else _value(v) for v in values.values())
        version = f"trial{trial.number}-" + ",".join(f"{key.split('.')[-1]}={v}" for key, v in zip(values, short))
        trial.set_user_attr("run", version)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": save_dir, "name": name, "version": version, "default_hp_metric": False},
        }
        argv = ["fit", *(f"--config={config}" for config in configs)]
        argv += [f"--{key}={_value(value)}" for key, value in values.items()]
        argv += [*(args or []), f"--trainer.logger={json.dumps(logger)}"]
        print(f"sweep trial {trial.number}: {version}", flush=True)
        try:  # the trial is this `fit` command line, as if typed (LightningCLI reads `sys.argv`)
            with patch.object(sys, "argv", [sys.argv[0], *argv]):
                trainer = SanaCLI(callbacks=[PyTorchLightningPruningCallback(trial, monitor=metric)]).trainer
            metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
            trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if math.isfinite(v)})
            trial.set_user_attr("steps", trainer.global_step)
            if not math.isfinite(metrics.get(metric, math.nan)):
                raise ValueError(f"the trial logged no finite '{metric}' (it logged {', '.join(metrics)})")
            return metrics[metric]
        except optuna.TrialPruned:
            raise
        except Exception as error:  # FAIL with its error; optuna logs the traceback and starts the next trial
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise

    # Trials of every state count, running ones of other workers included: together they run `n_trials`.
    if len(study.get_trials(deepcopy=False)) < n_trials:
        study.optimize(objective, catch=(Exception,), callbacks=[MaxTrialsCallback(n_trials, states=None)])
    rows = [_row(trial, metric) for trial in study.get_trials(deepcopy=False)]
    write_atomic(out / "summary.json", lambda file: file.write(json.dumps(rows, indent=2).encode()), durable=False)
    write_atomic(out / "summary.md", lambda file: file.write((markdown_table(rows) + "\n").encode()), durable=False)
    print(markdown_table(rows))
    return rows
