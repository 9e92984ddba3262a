"""Inference-time scaling on the Shapes domain (SANA 1.5, section 2.3 / figure 6): GenEval-Shapes vs N, per judge.

    python -m benchmarks.inference_scaling --vlm DIR --clip DIR [--checkpoint CKPT] [--prompts-per-task 8]

The prompts are the first `--prompts-per-task` of each task in the GenEval-Shapes evaluation metadata. `--max-n`
candidates a prompt are generated once (seeded); N = 1, 2, 4, ... uses the first N, so every N and every judge sees
the same images. Judges: a VLM verifier and a CLIP from local directories (for the report: trained on rendered
Shapes, never shown an evaluation prompt), random (lower bound) and the GenEval oracle (the exact detector that
scores the result: upper bound). Selection: SANA's knockout tournament and best-of-N by p(yes). Zero-order search
(perturb the best noise so far, keep what the VLM judge prefers) runs at the same number of generated and judged
images. Every selected image is scored by the exact detector with GenEval's rules. "ranking AUC": how often a judge
scores a candidate that passes above one of the same prompt that fails (0.5: chance, 1: the oracle), on all
candidates, a steadier measure of a judge than the curve's few prompts. Goal: VLM tournament at N=16 >=
N=1 + 15 points, with >= 60% of the oracle's gain.
"""

import argparse
import time

import matplotlib
import torch

from benchmarks.common import RESULTS, report
from sana_lightning.eval.geneval import ImageResult, first_per_task, read_metadata, score_images, summarize
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.images import to_pil
from sana_lightning.inference_scaling import best_of_n, knockout, zero_order_search
from sana_lightning.inference_scaling.judges import CLIPJudge, GenEvalOracleJudge, RandomJudge, VLMJudge
from sana_lightning.module import SanaFlowModule
from sana_lightning.sampling import initial_noise

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def geneval(records: list[dict], correct: list[bool]) -> dict:
    """GenEval's summary of one selected image a prompt."""
    return summarize([ImageResult(r["tag"], i, c) for i, (r, c) in enumerate(zip(records, correct))])


def ranking_auc(scores: list[float], correct: list[bool], n: int) -> float:
    """How often a passing candidate scores above a failing one of the same prompt (`n` a prompt; ties count half)."""
    wins = []
    for start in range(0, len(scores), n):
        own = list(zip(scores[start : start + n], correct[start : start + n]))
        wins += [(hit > miss) + 0.5 * (hit == miss) for hit, ok in own if ok for miss, bad in own if not bad]
    return sum(wins) / len(wins) if wins else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/report/version_*/checkpoints/last.ckpt", help="the model")
    parser.add_argument("--vlm", required=True, help="local VLM verifier directory")
    parser.add_argument("--clip", required=True, help="local CLIP verifier directory")
    parser.add_argument("--metadata", default="data/shapes/metadata.jsonl")
    parser.add_argument("--prompts-per-task", type=int, default=8)
    parser.add_argument("--max-n", type=int, default=32)
    parser.add_argument("--neighbors", type=int, default=4, help="zero-order search: perturbations a round")
    parser.add_argument("--similarity", type=float, default=0.9, help="zero-order search: cosine to the pivot")
    args = parser.parse_args()
    torch.manual_seed(0)
    module = SanaFlowModule.from_checkpoint(args.checkpoint)
    records = first_per_task(read_metadata(args.metadata), args.prompts_per_task)
    prompts = [r["prompt"] for r in records]
    n_max, detector = args.max_n, ShapesDetector()
    judges = {
        "VLM": VLMJudge(args.vlm, batch_size=64),
        "CLIP": CLIPJudge(args.clip, batch_size=64),
        "random": RandomJudge(seed=0),
        "oracle": GenEvalOracleJudge(detector, {r["prompt"]: r for r in records}),
    }

    start = time.perf_counter()
    seeds = [i * n_max + k for i in range(len(records)) for k in range(n_max)]  # as `generate`'s folder layout
    repeated = [p for p in prompts for _ in range(n_max)]
    images = [to_pil(x) for x in module.generate(repeated, seeds, progress=True)]
    generate_seconds = time.perf_counter() - start
    correct = [ok for ok, _ in score_images(images, [r for r in records for _ in range(n_max)], detector)]
    verdicts, judge_seconds = {}, {}
    for name, judge in judges.items():
        start = time.perf_counter()
        verdicts[name] = judge.judge_pairs(list(zip(repeated, images)))
        judge_seconds[name] = time.perf_counter() - start

    sizes = [2**e for e in range(n_max.bit_length()) if 2**e <= n_max]
    curves: dict[str, dict[int, dict]] = {}
    for name in judges:
        for selection in ("tournament", "best_of_n"):
            curve = curves[f"{name}, {selection}"] = {}
            for n in sizes:
                picked = []
                for i in range(len(records)):
                    own = verdicts[name][i * n_max : i * n_max + n]
                    (w,) = knockout(own, 1)[0] if selection == "tournament" else best_of_n([v.p_yes for v in own])
                    picked.append(correct[i * n_max + w])
                curve[n] = geneval(records, picked)

    start = time.perf_counter()
    first_noise = initial_noise(len(records), module.autoencoder.latent_channels, module.latent_size, seeds[::n_max])
    generate = lambda batch, noise: [to_pil(x) for x in module.generate(batch, noise=noise)]  # noqa: E731
    history = zero_order_search(prompts, first_noise, generate, judges["VLM"], n_max, args.neighbors, args.similarity)
    search_seconds = time.perf_counter() - start
    curve = curves["VLM, zero-order search"] = {}
    for n in sizes:
        chosen = [steps[n - 1].image for steps in history]
        curve[n] = geneval(records, [ok for ok, _ in score_images(chosen, records, detector)])

    auc = {name: ranking_auc([v.p_yes for v in verdicts[name]], correct, n_max) for name in judges}
    rows = [
        {
            "judge, selection": name,
            **{f"N={n}": s["overall"] for n, s in c.items()},
            "ranking AUC": auc.get(name.removesuffix(", tournament").removesuffix(", best_of_n"), "-"),
        }
        for name, c in curves.items()
    ]
    n16 = 16 if 16 in sizes else sizes[-1]
    vlm, oracle = curves["VLM, tournament"], curves["oracle, tournament"]
    gain, oracle_gain = vlm[n16]["overall"] - vlm[1]["overall"], oracle[n16]["overall"] - oracle[1]["overall"]
    goals = {
        f"VLM tournament gain at N={n16} (points)": 100 * gain,
        "share of the oracle's gain": gain / oracle_gain if oracle_gain else float("nan"),
    }
    report(
        "inference_scaling",
        rows,
        checkpoint=args.checkpoint,
        prompts=len(records),
        goals=goals,
        per_task={name: {n: s["tasks"] for n, s in c.items()} for name, c in curves.items()},
        seconds={"generate (N_max a prompt)": generate_seconds, "zero-order search": search_seconds, **judge_seconds},
    )
    print("\n".join(f"{k}: {v:.2f}" for k, v in goals.items()))
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for name, c in curves.items():
        style = "--" if "best_of_n" in name else ":" if "zero-order" in name else "-"
        axis.plot(sizes, [c[n]["overall"] for n in sizes], style, marker="o", label=name)
    axis.set(
        xscale="log",
        xlabel="generated and judged images per prompt N (log)",
        ylabel="GenEval-Shapes of the selected image",
        title=f"Inference-time scaling ({len(records)} prompts)",
    )
    axis.set_xticks(sizes, [str(n) for n in sizes])
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(RESULTS / "inference_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
