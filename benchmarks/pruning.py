"""Deep-to-shallow depth pruning + recovery on the Shapes domain (SANA 1.5, section 2.2 / table 4).

    python -m benchmarks.pruning --checkpoint GROWN [--targets 6 12] [--recovery-steps 100] \
        [--baseline CKPT --baseline-steps K]

SANA 1.5 prunes its 60-block model to 20 and 40 blocks. Here the checkpoint (the report model grown to 18 blocks and
trained, `configs/grow.yaml`) is pruned to each target (default a third and two thirds of its depth) by each
importance metric (cosine, angular, loss delta) and baseline (random blocks, the last blocks), then fine-tuned
`--recovery-steps` steps of configs/recover.yaml (batches of 16) with distillation from the unpruned model and
without. Scores: GenEval-Shapes (N=1; `--prompts-per-task` x `--images-per-prompt`, exact detector) and the
fixed-noise validation loss; "kept" = pruned GenEval / unpruned GenEval and unpruned loss / loss (1.0 = as good as
unpruned). `--baseline`: a model of a target depth that was never grown or pruned (the report model), fine-tuned the
same way (no teacher) for `--baseline-steps` steps, so that its total steps equal the growth + pruning path's.
Criteria that remove the same blocks share one (seeded, so identical) recovery: their rows are equal.
Goal: 18 -> 6, +100 steps, distilled: GenEval kept >= 0.95, ahead of random and of the same-depth baseline.
"""

import argparse
import json
import tempfile

import matplotlib

from benchmarks.common import RESULTS, from_config, geneval_shapes, report
from sana_lightning.checkpoints import read_checkpoint, resolve_path
from sana_lightning.module import SanaFlowModule
from sana_lightning.pruning.command import prune_checkpoint

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CRITERIA = ("cosine", "angular", "loss_delta", "random", "last")
DATA = {"data.init_args.batch_size": 16, "data.init_args.val_batches": 8, "data.init_args.num_workers": 1}


def val_loss(trainer, module, data) -> float:
    return trainer.validate(module, data, verbose=False)[0]["val/loss"]


def recover(start: str, teacher: str | None, settings: dict, steps: int):
    """configs/recover.yaml from the weights at `start` for `steps` steps (distilled from `teacher` if given), with
    the unpruned checkpoint's `settings`: the validation loss before, and the fine-tuned module and its loss."""
    recovery = {
        "model.init_args.pretrained": start,
        "model.init_args.teacher": teacher,
        "model.init_args.distill_weight": 1.0 if teacher else 0.0,
        "data.init_args.batches_per_epoch": max(steps, 1),
        "trainer.max_steps": steps,
    }
    module, data, trainer = from_config("recover.yaml", settings=settings | DATA | recovery)
    before = val_loss(trainer, module, data)
    trainer.fit(module, data)
    return before, module, val_loss(trainer, module, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/grow/version_*/checkpoints/last.ckpt", help="the deep model")
    parser.add_argument("--targets", type=int, nargs="+", help="depths to prune to (default: 1/3 and 2/3)")
    parser.add_argument("--recovery-steps", type=int, default=100)
    parser.add_argument("--baseline", help="a never-pruned model of a target depth (e.g. the report model)")
    parser.add_argument("--baseline-steps", type=int, default=100, help="its fine-tuning steps (equal total steps)")
    parser.add_argument("--prompts-per-task", type=int, default=8)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    args = parser.parse_args()
    checkpoint = resolve_path(args.checkpoint)
    source = SanaFlowModule.from_checkpoint(checkpoint)
    hparams = read_checkpoint(checkpoint)["hyper_parameters"]
    # The recovery runs use the encoders, flow and sampler the checkpoint was trained with.
    settings = {f"model.init_args.{k}": hparams[k] for k in ("text_encoder", "autoencoder", "flow", "sampler")}
    settings["data.init_args.image_size"] = hparams["image_size"]  # linked to the model's
    depth = len(source.transformer.transformer_blocks)
    targets = sorted(args.targets or {depth // 3, 2 * depth // 3}, reverse=True)
    if not all(0 < t < depth for t in targets):
        raise SystemExit(f"--targets {targets}: each must be between 1 and {depth - 1} (the checkpoint has {depth})")
    geneval = lambda module: geneval_shapes(module, args.prompts_per_task, args.images_per_prompt)["overall"]  # noqa: E731
    _, data, trainer = from_config(settings=settings | DATA)
    unpruned = {"loss": val_loss(trainer, source, data), "geneval": geneval(source)}
    print(f"unpruned ({depth} blocks): {unpruned}", flush=True)

    def row(depth_label: str, criterion: str, distill: str, steps: int, before: float, module, after: float) -> dict:
        score = geneval(module)
        return {
            "depth": depth_label,
            "criterion": criterion,
            "distill": distill,
            "fine-tune steps": steps,
            "val loss pruned": before,
            "val loss tuned": after,
            "GenEval tuned": score,
            "kept loss pruned": unpruned["loss"] / before,
            "kept loss tuned": unpruned["loss"] / after,
            "kept GenEval tuned": score / unpruned["geneval"] if unpruned["geneval"] else None,
        }

    rows, recovered = [], {}  # recovered: the rows of each (target, removed blocks) already fine-tuned
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            for criterion in CRITERIA:
                pruned = prune_checkpoint(checkpoint, f"{tmp}/{target}-{criterion}", target, criterion, batch_size=32)
                removed = (target, *json.loads((pruned / "prune.json").read_text())["removed"])
                if removed in recovered:  # the same blocks: the same (seeded) recovery, so its rows are reused
                    rows += [r | {"criterion": criterion} for r in recovered[removed]]
                    print(f"{criterion}: the blocks of {recovered[removed][0]['criterion']}, rows reused", flush=True)
                    continue
                recovered[removed] = []
                for distill, teacher in (("yes", checkpoint), ("no", None)):
                    recovered[removed].append(
                        row(
                            f"{depth}->{target}",
                            criterion,
                            distill,
                            args.recovery_steps,
                            *recover(str(pruned), teacher, settings, args.recovery_steps),
                        )
                    )
                    print(recovered[removed][-1], flush=True)
                rows += recovered[removed]
    if args.baseline:
        before, module, after = recover(resolve_path(args.baseline), None, settings, args.baseline_steps)
        label = f"{len(module.transformer.transformer_blocks)}, never pruned"
        rows.append(row(label, "-", "no", args.baseline_steps, before, module, after))
        print(rows[-1], flush=True)
    report("pruning", rows, checkpoint=checkpoint, unpruned=unpruned, baseline=args.baseline)
    plot(rows, targets, depth, args.recovery_steps)


def plot(rows: list[dict], targets: list[int], depth: int, steps: int) -> None:
    """GenEval kept and loss kept after recovery, one panel a target depth, one bar pair a criterion x distill."""
    figure, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4), sharey=True, squeeze=False)
    for axis, target in zip(axes[0], targets):
        chosen = [r for r in rows if r["depth"] == f"{depth}->{target}"]
        labels = [r["criterion"] + ("+distill" if r["distill"] == "yes" else "") for r in chosen]
        x = range(len(chosen))
        axis.bar([i - 0.2 for i in x], [r["kept GenEval tuned"] or 0 for r in chosen], 0.4, label="GenEval kept")
        axis.bar([i + 0.2 for i in x], [r["kept loss tuned"] for r in chosen], 0.4, label="loss kept")
        axis.axhline(0.95, color="grey", linestyle=":")
        axis.set_xticks(list(x), labels, rotation=30)
        axis.set(title=f"{depth} -> {target} blocks, +{steps} steps", ylabel="kept (1.0 = unpruned)")
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "pruning.png", dpi=120)


if __name__ == "__main__":
    main()
