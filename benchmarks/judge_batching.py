"""Judging in batches (issue #16): one `judge_pairs` forward for 32 (prompt, image) pairs vs 32 single-pair calls.

    python -m benchmarks.judge_batching [--pairs 32] [--repeats 3] [--threads 1]

Judge: `VLMJudge` on a tiny random Llava (CLIP vision + Llama text, the configuration of the tests'
`save_tiny_llava`, built here: benchmarks do not import tests/) with the embedded MiniLM tokenizer, on CPU. The
pairs are Shapes scenes of every GenEval task with their own prompts (so prompts differ in length and the batch is
left-padded). After one warm-up of each, the median of `--repeats` runs. Goal: batched >= 4x faster per image.
"""

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import report
from benchmarks.tiny_vlm import save_tiny_llava
from sana_lightning.data.shapes import TASKS, SceneSampler, render
from sana_lightning.inference_scaling import VLMJudge
from sana_lightning.inference_scaling.verifier_models import minilm_tokenizer


def save_tiny_vlm(path: Path) -> Path:
    """The tests' tiny Llava, with the embedded MiniLM tokenizer, saved."""
    return save_tiny_llava(path, minilm_tokenizer())


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sampler = SceneSampler(64, random.Random(0))
    scenes = [sampler.sample(TASKS[i % len(TASKS)]) for i in range(args.pairs)]
    pairs = [(scene.prompt, render(scene.objects, 64)) for scene in scenes]
    with tempfile.TemporaryDirectory() as tmp:
        judge = VLMJudge(str(save_tiny_vlm(Path(tmp) / "vlm")), batch_size=args.pairs)
    single = median_seconds(lambda: [judge.judge_pairs([pair]) for pair in pairs], args.repeats)
    batched = median_seconds(lambda: judge.judge_pairs(pairs), args.repeats)
    same = all(
        a.yes == b.yes and abs(a.p_yes - b.p_yes) < 1e-5 and abs(a.p_no - b.p_no) < 1e-5
        for a, b in zip(judge.judge_pairs(pairs), [judge.judge_pairs([pair])[0] for pair in pairs])
    )
    rows = [
        {"mode": f"{args.pairs} single-pair calls", "ms / image": 1000 * single / args.pairs, "speed-up": 1.0},
        {
            "mode": f"one judge_pairs of {args.pairs}",
            "ms / image": 1000 * batched / args.pairs,
            "speed-up": single / batched,
        },
    ]
    report("judge_batching", rows, threads=args.threads, repeats=args.repeats, batched_equals_single=same)
    print(f"speed-up {single / batched:.1f}x per image (goal >= 4x); batched verdicts equal single ones: {same}")


if __name__ == "__main__":
    main()
