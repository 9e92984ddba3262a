"""Inference-time scaling: N candidates per prompt, judged, the best k kept (SANA 1.5, section 2.3)."""

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from PIL import Image

from sana_lightning.eval.folder import write_folder
from sana_lightning.inference_scaling.judges import Judge
from sana_lightning.inference_scaling.tournament import best_of_n, knockout

Selection = Literal["tournament", "best_of_n"]


def scale(
    out_dir: str | Path,
    records: list[dict],
    generate: Callable[[list[str], list[int]], list[Image.Image]],
    judge: Judge,
    num_candidates: int = 16,
    k: int = 1,
    selection: Selection = "tournament",
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Generate `num_candidates` images per prompt under `<out_dir>/candidates/` (GenEval layout, resumable: an
    interrupted run regenerates nothing), judge them, and copy the selected `k` to `<out_dir>/<00000>/samples/`.
    Writes and returns `scores.json`: every verdict, the winners, judge calls and comparisons, and timings."""
    if selection not in ("tournament", "best_of_n"):
        raise ValueError(f"unknown selection '{selection}': use tournament or best_of_n")
    out = Path(out_dir)
    start = time.perf_counter()
    candidates = write_folder(out / "candidates", records, num_candidates, generate, batch_size, seed)
    generated = time.perf_counter()
    prompts, judge_calls, comparisons = [], 0, 0
    for index, record in enumerate(records):
        paths = [candidates / f"{index:05d}" / "samples" / f"{i:04d}.png" for i in range(num_candidates)]
        verdicts = judge.judge([Image.open(p).convert("RGB") for p in paths], record["prompt"])
        judge_calls += len(verdicts)
        if selection == "tournament":
            winners, made = knockout(verdicts, k)
            comparisons += made
        else:
            winners = best_of_n([v.p_yes for v in verdicts], k)
        folder = out / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n")
        for rank, winner in enumerate(winners):
            shutil.copyfile(paths[winner], folder / "samples" / f"{rank:04d}.png")
        prompts.append({"prompt": record["prompt"], "winners": winners, "verdicts": [asdict(v) for v in verdicts]})
    result = {
        "num_candidates": num_candidates,
        "k": k,
        "selection": selection,
        "images_generated": num_candidates * len(records),
        "judge_calls": judge_calls,
        "comparisons": comparisons,
        "generate_seconds": generated - start,
        "judge_seconds": time.perf_counter() - generated,
        "prompts": prompts,
    }
    (out / "scores.json").write_text(json.dumps(result, indent=2))
    return result
