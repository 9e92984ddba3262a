"""Judging candidates in Lightning's predict loop: the (prompt, candidate) pairs split over the devices of the
Trainer's flags, `batch_size` pairs a `judge_pairs` call, the verdicts merged on rank 0 in candidate order, so 1 or 8
devices give the same verdicts (and winners)."""

from pathlib import Path

from PIL import Image

from sana_lightning.generation import HostModule, predict_on_devices
from sana_lightning.inference_scaling.judges import Judge
from sana_lightning.inference_scaling.tournament import Verdict
from sana_lightning.trainer_options import TrainerOptions


class JudgeModule(HostModule):
    """Predict step: the verdicts on a batch of (job number, (prompt, candidate path)) items. The judge's torch
    models (and those of an oracle's detector) are submodules, so Lightning moves them to the rank's device; the
    judge (and detector) is told its new device before judging. A judge without torch models (the GenEval oracle
    with the Shapes detector) judges where it is."""

    def __init__(self, judge: Judge) -> None:
        detector = getattr(judge, "detector", None)
        super().__init__(judge, *([detector] if detector is not None else []))
        self.judge = judge

    def predict_step(self, batch: list[tuple[int, tuple[str, str]]], batch_idx: int) -> list[tuple[int, Verdict]]:
        pairs = [(prompt, Image.open(path).convert("RGB")) for _, (prompt, path) in batch]
        return list(zip([number for number, _ in batch], self.judge.judge_pairs(pairs)))


def candidate_jobs(out_dir: str | Path, records: list[dict], num_candidates: int) -> list[tuple[str, str]]:
    """(prompt, path) of every candidate under `<out_dir>/candidates/`, prompt by prompt, in candidate order."""
    folders = [Path(out_dir) / "candidates" / f"{index:05d}" / "samples" for index in range(len(records))]
    return [
        (record["prompt"], str(folder / f"{k:04d}.png"))
        for record, folder in zip(records, folders)
        for k in range(num_candidates)
    ]


def judge_on_devices(
    out_dir: str | Path,
    records: list[dict],
    judge: Judge,
    num_candidates: int,
    batch_size: int,
    trainer: TrainerOptions,
) -> list[Verdict] | None:
    """Every candidate's verdict (candidate order, as `select_candidates` takes them) in the predict loop of a
    Trainer with `trainer`'s flags, on every rank: the list on rank 0, None on the other ranks."""
    jobs = candidate_jobs(out_dir, records, num_candidates)
    if not jobs:
        return []
    return predict_on_devices(JudgeModule(judge), jobs, out_dir, "verdicts", Verdict, batch_size, trainer)
