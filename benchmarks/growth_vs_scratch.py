"""Depth growth vs training from scratch on the Shapes domain (SANA 1.5, section 2.1 / figure 3).

    python -m benchmarks.growth_vs_scratch [--source CKPT] [--target-layers 12] [--steps 200]

Trains the deep target from scratch and from each growth initialisation of the trained demo model, with the same
data order, noise, steps and learning rate (EMA off), and records the fixed-noise validation loss. Reports how
many steps each run needs to reach the scratch run's final validation loss. The source's own training is not
counted (as in the paper, growth reuses a model that already exists). Goal: growth <= 35% of the scratch steps.
"""

import argparse

import lightning as L
import matplotlib
import torch

from benchmarks.common import RESULTS, report
from sana_lightning.checkpoints import resolve_path
from sana_lightning.data.datamodule import ShapesDataModule
from sana_lightning.flow import FlowConfig
from sana_lightning.growth_module import GrowthModule
from sana_lightning.module import SanaFlowModule, TextEncoderConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STRATEGIES = ("partial_preservation", "cyclic", "block_expand", "stack")


class ValidationCurve(L.Callback):
    def __init__(self):
        self.points: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.points.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def train(name: str, module_fn, args) -> list[tuple[int, float]]:
    L.seed_everything(0, verbose=False)
    module = module_fn()
    data = ShapesDataModule(batch_size=args.batch_size, batches_per_epoch=args.steps, val_batches=4, num_workers=1)
    curve = ValidationCurve()
    trainer = L.Trainer(
        max_steps=args.steps,
        val_check_interval=args.eval_every,
        check_val_every_n_epoch=None,
        accelerator="cpu",
        logger=L.pytorch.loggers.TensorBoardLogger("runs", name="growth_vs_scratch", version=name),
        callbacks=[curve],
        enable_checkpointing=False,
        enable_progress_bar=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
    )
    trainer.validate(module, data, verbose=False)  # the loss at step 0
    trainer.fit(module, data)
    print(f"{name}: " + ", ".join(f"{s}:{v:.4f}" for s, v in curve.points), flush=True)
    return curve.points


def steps_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((step for step, loss in curve if loss <= level), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="runs/sana/version_*/checkpoints/last.ckpt")
    parser.add_argument("--target-layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    args = parser.parse_args()
    source = resolve_path(args.source)
    common = dict(
        preset="small",
        image_size=32,
        text_encoder=TextEncoderConfig(max_length=16),
        flow=FlowConfig(shift=1.0),
        ema_decay=None,
        optimizer=lambda groups: torch.optim.AdamW(groups, lr=3e-4),
    )
    curves = {
        "scratch": train(
            "scratch", lambda: SanaFlowModule(transformer={"num_layers": args.target_layers}, **common), args
        )
    }
    for strategy in args.strategies:
        growth = {"target_layers": args.target_layers, "strategy": strategy, "drop_last": 2}
        curves[strategy] = train(strategy, lambda: GrowthModule(source=source, growth=growth, **common), args)
    target = curves["scratch"][-1][1]
    rows = []
    for name, curve in curves.items():
        reached = steps_to_reach(curve, target)
        rows.append(
            {
                "init": name,
                "val loss @0": curve[0][1],
                f"val loss @{args.steps}": curve[-1][1],
                "steps to scratch's final loss": reached if reached is not None else f">{args.steps}",
                "fraction of scratch steps": reached / args.steps if reached is not None else float("nan"),
            }
        )
    report("growth_vs_scratch", rows, source=source, curves=curves)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        axis.plot(*zip(*curve), marker="o", markersize=3, label=name)
    axis.axhline(target, color="grey", linestyle=":", label="scratch final")
    axis.set(
        xlabel="training step",
        ylabel="validation loss (fixed noise)",
        yscale="log",
        title=f"Shapes: {args.target_layers}-block Sana, growth from the 6-block demo vs scratch",
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "growth_vs_scratch.png", dpi=120)


if __name__ == "__main__":
    main()
