"""Inference-time scaling on the Shapes domain (SANA 1.5, section 2.3 / figure 6): GenEval-Shapes vs N.

    python -m benchmarks.inference_scaling [--checkpoint CKPT] [--prompts-per-task 4] [--max-n 32]

32 candidates a prompt are generated once (seeded); best-of-N for N = 1, 2, 4, ... uses the first N of them, so
every N is measured on the same images. Judge: the GenEval oracle (exact Shapes detector), an upper bound for a
VLM judge; selection: SANA's knockout tournament. Cost per N: images generated, judge calls, comparisons,
seconds (generation time scales with N). Goal: best-of-16 >= N=1 + 15 points.
"""

import argparse
import tempfile
import time

import matplotlib

from benchmarks.common import RESULTS, pil_generator, report
from sana_lightning.data.shapes import evaluation_scenes
from sana_lightning.eval.folder import load_sample, write_folder
from sana_lightning.eval.geneval import ImageResult, summarize
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.inference_scaling import GenEvalOracleJudge, knockout
from sana_lightning.module import SanaFlowModule

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/sana/version_*/checkpoints/last.ckpt")
    parser.add_argument("--prompts-per-task", type=int, default=4)
    parser.add_argument("--max-n", type=int, default=32)
    args = parser.parse_args()
    module = SanaFlowModule.from_checkpoint(args.checkpoint)
    records = [s.metadata() for s in evaluation_scenes(args.prompts_per_task, module.hparams.image_size)]
    judge = GenEvalOracleJudge(ShapesDetector(), {r["prompt"]: r for r in records})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = write_folder(tmp, records, args.max_n, pil_generator(module), batch_size=64)
        seconds_per_image = (time.perf_counter() - start) / (args.max_n * len(records))
        verdicts = [
            judge.judge([load_sample(folder / f"{i:05d}/samples/{j:04d}.png") for j in range(args.max_n)], r["prompt"])
            for i, r in enumerate(records)
        ]
    rows, n = [], 1
    while n <= args.max_n:
        results, comparisons = [], 0
        for index, (record, candidates) in enumerate(zip(records, verdicts)):
            (winner,), made = knockout(candidates[:n], 1)
            comparisons += made
            results.append(ImageResult(record["tag"], index, candidates[winner].yes))
        summary = summarize(results)
        rows.append(
            {
                "N": n,
                "GenEval-Shapes": summary["overall"],
                **{tag: task["accuracy"] for tag, task in summary["tasks"].items()},
                "images": n * len(records),
                "judge calls": n * len(records),
                "comparisons": comparisons,
                "generation s": n * len(records) * seconds_per_image,
            }
        )
        n *= 2
    report("inference_scaling", rows, checkpoint=args.checkpoint, judge="GenEval oracle (Shapes detector)")
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([r["N"] for r in rows], [r["GenEval-Shapes"] for r in rows], marker="o")
    axis.set(
        xscale="log",
        xlabel="candidates per prompt N (log)",
        ylabel="GenEval-Shapes (best of N)",
        title="Inference-time scaling, knockout with the GenEval oracle",
    )
    axis.set_xticks([r["N"] for r in rows], [str(r["N"]) for r in rows])
    figure.tight_layout()
    figure.savefig(RESULTS / "inference_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
