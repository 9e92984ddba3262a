"""Lightning CLI sweeps: `fit` over a grid of overrides on stacked configs, one TensorBoard version per run."""

import itertools
import json
import logging
import math
from pathlib import Path

from sana_lightning.tables import markdown_table

log = logging.getLogger(__name__)


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_sweep(
    configs: list[str],
    grid: dict[str, list],
    name: str = "sweep",
    save_dir: str = "runs",
    args: list[str] | None = None,
) -> list[dict]:
    """`fit --config c1 --config c2 ... --key=value ...` for every combination of `grid` (dotted option -> values),
    plus the fixed `args`. Each run logs to TensorBoard `save_dir/name/<key=value,...>` (hyper-parameters included);
    the final metrics of all runs go to `save_dir/name/summary.md` and `summary.json`. A failed run is recorded
    with its error and the sweep goes on."""
    from sana_lightning.cli import SanaCLI

    keys, rows = list(grid), []
    for values in itertools.product(*grid.values()):
        version = ",".join(f"{key.split('.')[-1]}={_value(value)}" for key, value in zip(keys, values))
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": save_dir, "name": name, "version": version, "default_hp_metric": False},
        }
        argv = ["fit", *(f"--config={config}" for config in configs)]
        argv += [f"--{key}={_value(value)}" for key, value in zip(keys, values)]
        argv += [*(args or []), f"--trainer.logger={json.dumps(logger)}"]
        row = {"run": version, **dict(zip(keys, values))}
        print(f"sweep run {len(rows) + 1}: {version}", flush=True)
        try:
            trainer = SanaCLI(args=argv).trainer
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            row |= {k: v for k, v in sorted(metrics.items()) if math.isfinite(v)} | {"steps": trainer.global_step}
        except Exception as error:  # one bad combination must not lose the others
            log.exception("sweep run %s failed", version)
            row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
    out = Path(save_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    (out / "summary.md").write_text(markdown_table(rows) + "\n")
    print(markdown_table(rows))
    return rows
