"""Depth growth vs training from scratch on the Shapes domain (SANA 1.5, section 2.1 / figure 3).

    python -m benchmarks.growth_vs_scratch [--source CKPT] [--target-layers 12] [--steps 200]

Trains the deep target from scratch (configs/base.yaml) and from each growth initialisation of the trained demo
model (configs/grow.yaml), with the same data order, noise, steps and learning rate (EMA off), and records the
fixed-noise validation loss. Reports how many steps each run needs to reach the scratch run's final validation loss.
The source's own training is not counted (as in the paper, growth reuses a model that already exists). Goal: growth
<= 35% of the scratch steps.

    python -m benchmarks.growth_vs_scratch --two-stage [--source-steps 300] [--target-layers 12]

SANA's 1.6B -> 4.8B recipe on Shapes instead: a 6-block source trained without QK norm, QK-norm adaptation (the
same depth, fine-tuned: stage 1), then growth by partial preservation with zero-gated new blocks (stage 2). Reports
the max abs output difference at step 0 between each grown model and the model it grew from: the adapted source
(two-stage) and the source without QK norm grown straight into a QK-norm target (one-stage).
"""

import argparse
import tempfile

import lightning as L
import matplotlib

from benchmarks.common import RESULTS, from_config, report, tensorboard
from sana_lightning.checkpoints import resolve_path
from sana_lightning.growth import GrowthConfig, Strategy, grow, max_output_difference

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STRATEGIES = ("partial_preservation", "cyclic", "block_expand", "stack")  # the default set; all: Strategy


class ValidationCurve(L.Callback):
    def __init__(self):
        self.points: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.points.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def train(
    name: str, args, model: dict, *overlays: str, steps: int | None = None
) -> tuple[list[tuple[int, float]], L.LightningModule]:
    """configs/base.yaml (+ `overlays`) with the `model` settings (its `init_args`), EMA off, trained
    for `steps` (`--steps`) on batches of `--batch-size`: its validation loss every `--eval-every` steps."""
    steps = steps or args.steps
    settings = {
        **{f"model.init_args.{key}": value for key, value in model.items()},
        "model.init_args.ema_decay": None,
        "data.init_args.batch_size": args.batch_size,
        "data.init_args.batches_per_epoch": steps,
        "trainer.max_steps": steps,
        "trainer.val_check_interval": args.eval_every,
        "trainer.check_val_every_n_epoch": None,
        "trainer.logger": tensorboard("runs", "growth_vs_scratch", version=name),
    }
    curve = ValidationCurve()
    module, data, trainer = from_config(*overlays, settings=settings, callbacks=[curve])
    trainer.validate(module, data, verbose=False)  # the loss at step 0
    trainer.fit(module, data)
    print(f"{name}: " + ", ".join(f"{s}:{v:.4f}" for s, v in curve.points), flush=True)
    return curve.points, module


def two_stage(args) -> None:
    """Source without QK norm -> QK-norm adaptation (stage 1) -> growth (stage 2), against growing it directly."""
    _, plain = train("source_no_qk", args, {"transformer": {"qk_norm": None}}, steps=args.source_steps)
    with tempfile.TemporaryDirectory() as work:
        plain.transformer.save_pretrained(work)
        adaptation = {"target_layers": plain.transformer.config.num_layers, "drop_last": 0}
        _, adapted = train(
            "qk_adapted", args, {"pretrained": work, "growth": adaptation}, "grow.yaml", steps=args.source_steps
        )
    growth = GrowthConfig(args.target_layers, "partial_preservation", drop_last=0, zero_gate=True)
    rows = []
    for path, source in (("one-stage", plain.transformer), ("two-stage", adapted.transformer)):
        source.eval()
        grown, _ = grow(source, growth)
        difference = max_output_difference(source, grown)
        rows.append(
            {
                "path": path,
                "grown from": f"{source.config.num_layers} blocks, qk_norm={source.config.qk_norm}",
                "max abs output diff at step 0": difference,
                "identity (< 1e-5)": difference < 1e-5,
            }
        )
    report("growth_two_stage", rows, source_steps=args.source_steps, target_layers=args.target_layers)


def steps_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((step for step, loss in curve if loss <= level), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="runs/sana/version_*/checkpoints/last.ckpt")
    parser.add_argument("--target-layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=Strategy.__args__)
    parser.add_argument("--two-stage", action="store_true", help="SANA's QK-norm adaptation then growth (see above)")
    parser.add_argument("--source-steps", type=int, default=300, help="--two-stage: steps of the source, stage 1")
    args = parser.parse_args()
    if args.two_stage:
        return two_stage(args)
    source = resolve_path(args.source)
    curves = {"scratch": train("scratch", args, {"transformer": {"num_layers": args.target_layers}})[0]}
    for strategy in args.strategies:
        growth = {"target_layers": args.target_layers, "strategy": strategy, "drop_last": 2}
        curves[strategy] = train(strategy, args, {"pretrained": source, "growth": growth}, "grow.yaml")[0]
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
