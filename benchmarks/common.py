"""Shared by the benchmarks: the model, data and trainer of `configs/*.yaml`, images for GenEval folders, and a
table printed and written (JSON + markdown) under benchmarks/results/."""

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest.mock import patch

from sana_lightning.tables import markdown_table

if TYPE_CHECKING:
    import lightning as L
    from PIL import Image

    from sana_lightning.module import SanaFlowModule

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "configs"

QUIET_TRAINER = {
    "trainer.accelerator": "cpu",
    "trainer.logger": False,
    "trainer.callbacks": [],
    "trainer.enable_checkpointing": False,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "trainer.num_sanity_val_steps": 0,
}
"""What a benchmark's trainer leaves out of the config's: logging, checkpoints, progress, the summary and the
sanity check (gradient clipping, `log_every_n_steps` and the rest stay the config's)."""


def _value(value: Any) -> str:
    """A Python value as a command-line value of the CLI (`null`, `false`, JSON for lists and dicts)."""
    return value if isinstance(value, str) else json.dumps(value)


def from_config(
    *overlays: str, settings: dict[str, Any] | None = None, callbacks: list | None = None
) -> tuple["SanaFlowModule", "L.LightningDataModule", "L.Trainer"]:
    """The model, data module and trainer of `configs/base.yaml` stacked with `overlays` (names under configs/, e.g.
    `"grow.yaml"`), as `SanaCLI(run=False)` builds them, seeded by the config: `settings` are the CLI's dotted
    overrides (`{"model.init_args.ema_decay": None}`), applied after `QUIET_TRAINER`; `callbacks` (instances) are
    the trainer's only ones besides the model's own."""
    from lightning.pytorch.cli import SaveConfigCallback

    from sana_lightning.lightning_cli import SanaCLI

    configs = [arg for name in ("base.yaml", *overlays) for arg in ("--config", str(CONFIGS / name))]
    overrides = [f"--{key}={_value(value)}" for key, value in (QUIET_TRAINER | (settings or {})).items()]
    with patch.object(sys, "argv", sys.argv[:1]):  # the benchmark's own flags are not a second command line
        cli = SanaCLI(args=[*configs, *overrides], run=False, callbacks=callbacks)
    # No config.yaml beside the results (the CLI saves one into the log directory, the working one without a logger).
    cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
    return cli.model, cli.datamodule, cli.trainer


def bare_step(module: "SanaFlowModule", optimizer, batch: dict, step: int, bf16: bool = False) -> None:
    """One training step of the config's module without Lightning: loss (under bf16 autocast if asked), backward,
    gradient clipping at 1.0, optimizer step, EMA update."""
    import torch

    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = module.flow_step(batch, module.noise_generator(0, 0, step))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.transformer.parameters(), 1.0)
    optimizer.step()
    module.ema.update_parameters(module.transformer)


def tensorboard(save_dir: str, name: str, **init_args) -> dict:
    """A TensorBoard logger as a `trainer.logger` setting of `from_config`."""
    init_args = {"save_dir": save_dir, "name": name, "default_hp_metric": False, **init_args}
    return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": init_args}


def pil_generator(module: "SanaFlowModule", **options) -> Callable[[list[str], list[int]], list["Image.Image"]]:
    """`module.generate` (with `options`, e.g. `sampler`, `batch_size`) as `write_folder`'s `generate`: PIL images."""
    from sana_lightning.images import to_pil

    return lambda prompts, seeds: [to_pil(image) for image in module.generate(prompts, seeds, **options)]


def geneval_shapes(module: "SanaFlowModule", prompts_per_task: int, images_per_prompt: int) -> dict:
    """GenEval-Shapes summary of `module` (EMA weights when kept) on the first `prompts_per_task` evaluation scenes
    of each task, `images_per_prompt` seeds (0, 1, ...) each, scored by the exact detector."""
    from sana_lightning.data.shapes import evaluation_scenes
    from sana_lightning.eval.geneval import ImageResult, score_images, summarize
    from sana_lightning.eval.shapes_detector import ShapesDetector

    records = [s.metadata() for s in evaluation_scenes(prompts_per_task, module.hparams.image_size)]
    repeated = [r for r in records for _ in range(images_per_prompt)]
    images = pil_generator(module)([r["prompt"] for r in repeated], list(range(len(repeated))))
    scores = score_images(images, repeated, ShapesDetector())
    return summarize(
        [ImageResult(r["tag"], i // images_per_prompt, ok) for i, (r, (ok, _)) in enumerate(zip(repeated, scores))]
    )


def report(name: str, rows: list[dict], **extra) -> Path:
    """Print `rows` as a markdown table and save them with the command that made them."""
    table = markdown_table(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks." + Path(sys.argv[0]).stem, *sys.argv[1:]])
    (RESULTS / f"{name}.md").write_text(f"`{command}`\n\n{table}\n")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"command": command, "rows": rows, **extra}, indent=2))
    return path


@contextmanager
def checkout(ref: str):
    """`ref` checked out (detached) in a temporary git worktree, removed on exit: the baseline a benchmark compares
    this tree with."""
    folder = Path(tempfile.mkdtemp(prefix="baseline_"))
    tree = folder / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(folder, ignore_errors=True)
