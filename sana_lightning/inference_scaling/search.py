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
from sana_lightning.inference_scaling.tournament import Verdict, best_of_n, knockout

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
    """Generate `num_candidates` images per prompt under `<out_dir>/candidates/` in this process (GenEval layout,
    resumable: an interrupted run regenerates nothing; the `scale` command makes them in Lightning's predict loop on
    any number of devices instead), then `select_candidates`."""
    start = time.perf_counter()
    write_folder(Path(out_dir) / "candidates", records, num_candidates, generate, batch_size, seed)
    return select_candidates(
        out_dir, records, judge, num_candidates, k, selection, batch_size, time.perf_counter() - start
    )


def select_candidates(
    out_dir: str | Path,
    records: list[dict],
    judge: Judge,
    num_candidates: int = 16,
    k: int = 1,
    selection: Selection = "tournament",
    batch_size: int = 32,
    generate_seconds: float = 0.0,
    verdicts: list[Verdict] | None = None,
    judge_seconds: float = 0.0,
) -> dict:
    """Judge the candidates under `<out_dir>/candidates/` (`batch_size` pairs a `judge_pairs` call, across prompts)
    and copy the selected `k` of each prompt to `<out_dir>/<00000>/samples/`. Writes and returns `scores.json`: every
    verdict, the winners, judge calls and comparisons, and timings. `verdicts` (every candidate's, prompt by prompt
    in candidate order, as the `scale` command gets them from the predict loop) skip the judging here; then
    `judge_seconds` is the time they took."""
    if selection not in ("tournament", "best_of_n"):
        raise ValueError(f"unknown selection '{selection}': use tournament or best_of_n")
    out = Path(out_dir)
    start = time.perf_counter()
    folders = [out / "candidates" / f"{index:05d}" / "samples" for index in range(len(records))]
    paths = [[folder / f"{k:04d}.png" for k in range(num_candidates)] for folder in folders]
    jobs = [(record["prompt"], path) for record, own in zip(records, paths) for path in own]
    if verdicts is not None and len(verdicts) != len(jobs):
        raise ValueError(f"{len(verdicts)} verdicts for {len(jobs)} candidates: give one a candidate")
    every_verdict = list(verdicts) if verdicts is not None else []
    for first in range(0, len(jobs) if verdicts is None else 0, batch_size):  # across prompts: small N fills it
        chunk = jobs[first : first + batch_size]
        every_verdict += judge.judge_pairs([(prompt, Image.open(path).convert("RGB")) for prompt, path in chunk])
    prompts, judge_calls, comparisons = [], 0, 0
    for index, record in enumerate(records):
        verdicts = every_verdict[index * num_candidates : (index + 1) * num_candidates]
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
            shutil.copyfile(paths[index][winner], folder / "samples" / f"{rank:04d}.png")
        prompts.append({"prompt": record["prompt"], "winners": winners, "verdicts": [asdict(v) for v in verdicts]})
    result = {
        "num_candidates": num_candidates,
        "k": k,
        "selection": selection,
        "images_generated": num_candidates * len(records),
        "judge_calls": judge_calls,
        "comparisons": comparisons,
        "generate_seconds": generate_seconds,
        "judge_seconds": judge_seconds + time.perf_counter() - start,
        "prompts": prompts,
    }
    (out / "scores.json").write_text(json.dumps(result, indent=2))
    return result
