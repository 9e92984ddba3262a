"""Depth pruning + recovery on the Shapes domain (SANA 1.5, section 2.2 / table 4).

    python -m benchmarks.pruning [--checkpoint CKPT] [--recovery-steps 100]

From a trained model, prune to 1/2 and 1/3 of its depth by each importance metric (cosine, angular, loss delta)
and by the baselines (random blocks, the last blocks). Score: the fixed-noise validation loss (GenEval-Shapes once
that lands), as "quality kept" = unpruned loss / loss (1.0 = as good as unpruned). Measured right after pruning
and after `--recovery-steps` fine-tuning steps of configs/recover.yaml (batches of 16) without distillation, and with
distillation for the cosine metric.
Goal: importance pruning + 100 steps keeps >= 95% at half depth and beats random and last-k.
"""

import argparse
import tempfile
from pathlib import Path

import matplotlib

from benchmarks.common import RESULTS, from_config, report
from sana_lightning.checkpoints import read_checkpoint, resolve_path
from sana_lightning.module import SanaFlowModule
from sana_lightning.pruning.command import prune_checkpoint

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CRITERIA = ("cosine", "angular", "loss_delta", "random", "last")
DATA = {"data.init_args.batch_size": 16, "data.init_args.val_batches": 8, "data.init_args.num_workers": 1}


def val_loss(trainer, module, data) -> float:
    return trainer.validate(module, data, verbose=False)[0]["val/loss"]


def recover(pruned: Path, teacher: str | None, settings: dict, steps: int) -> tuple[float, float]:
    """configs/recover.yaml on `pruned`, for `steps` steps (distilled from `teacher` if given), with the unpruned
    checkpoint's `settings`: the validation loss before and after."""
    recovery = {
        "model.init_args.pretrained": str(pruned),
        "model.init_args.teacher": teacher,
        "model.init_args.distill_weight": 1.0 if teacher else 0.0,
        "data.init_args.batches_per_epoch": max(steps, 1),
        "trainer.max_steps": steps,
    }
    module, data, trainer = from_config("recover.yaml", settings=settings | DATA | recovery)
    before = val_loss(trainer, module, data)
    trainer.fit(module, data)
    return before, val_loss(trainer, module, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/sana/version_*/checkpoints/last.ckpt")
    parser.add_argument("--recovery-steps", type=int, default=100)
    args = parser.parse_args()
    checkpoint = resolve_path(args.checkpoint)
    source = SanaFlowModule.from_checkpoint(checkpoint)
    hparams = read_checkpoint(checkpoint)["hyper_parameters"]
    # The recovery runs use the encoders, flow and sampler the checkpoint was trained with.
    settings = {f"model.init_args.{k}": hparams[k] for k in ("text_encoder", "autoencoder", "flow", "sampler")}
    settings["data.init_args.image_size"] = hparams["image_size"]  # linked to the model's
    depth = len(source.transformer.transformer_blocks)
    _, data, trainer = from_config(settings=settings | DATA)
    unpruned = val_loss(trainer, source, data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in sorted({depth // 2, depth // 3}, reverse=True):
            for criterion in CRITERIA:
                pruned = prune_checkpoint(checkpoint, f"{tmp}/{target}-{criterion}", target, criterion, batch_size=32)
                runs = [("no", None)] + [("yes", checkpoint)] * (criterion == "cosine")
                for distill, teacher in runs:
                    after, recovered = recover(pruned, teacher, settings, args.recovery_steps)
                    rows.append(
                        {
                            "depth": f"{depth}->{target}",
                            "criterion": criterion,
                            "distill": distill,
                            "val loss pruned": after,
                            f"val loss +{args.recovery_steps} steps": recovered,
                            "kept pruned": unpruned / after,
                            f"kept +{args.recovery_steps}": unpruned / recovered,
                        }
                    )
                    print(rows[-1], flush=True)
    report("pruning", rows, checkpoint=checkpoint, unpruned_val_loss=unpruned)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, target in zip(axes, sorted({r["depth"] for r in rows}, reverse=True)):
        chosen = [r for r in rows if r["depth"] == target]
        labels = [r["criterion"] + ("+distill" if r["distill"] == "yes" else "") for r in chosen]
        x = range(len(chosen))
        axis.bar([i - 0.2 for i in x], [r["kept pruned"] for r in chosen], 0.4, label="right after pruning")
        axis.bar(
            [i + 0.2 for i in x],
            [r[f"kept +{args.recovery_steps}"] for r in chosen],
            0.4,
            label=f"+{args.recovery_steps} steps",
        )
        axis.axhline(0.95, color="grey", linestyle=":")
        axis.set_xticks(list(x), labels, rotation=30)
        axis.set(title=f"depth {target}", ylabel="quality kept (unpruned loss / loss)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "pruning.png", dpi=120)


if __name__ == "__main__":
    main()
