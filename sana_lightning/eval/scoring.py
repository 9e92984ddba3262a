"""GenEval scoring in Lightning's predict loop: a folder's images split over the devices of the Trainer's flags
(each rank scores its share, a batch a detector forward), the per-image results merged on rank 0 in folder then
sample order, so 1 or 8 devices give the same `geneval.json`."""

import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from sana_lightning.eval.folder import ScoreJob, folder_jobs, score_jobs
from sana_lightning.eval.geneval import Detector, ImageResult
from sana_lightning.generation import TrainerOptions, as_list

PARTS = ".geneval-rank{rank}.jsonl"


class DetectorModule(L.LightningModule):
    """Predict step: GenEval's verdicts on a batch of (job number, job) items. The detector's torch models are
    submodules, so Lightning moves them to the rank's device; the detector is told its new device before scoring."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector
        self.models = torch.nn.ModuleList(v for v in vars(detector).values() if isinstance(v, torch.nn.Module))

    def on_predict_start(self) -> None:
        if hasattr(self.detector, "device"):
            self.detector.device = self.device
        cached = getattr(self.detector, "_color_embeddings", None)  # CLIP text embeddings made on another device
        if isinstance(cached, dict):
            cached.clear()

    def predict_step(self, batch: list[tuple[int, ScoreJob]], batch_idx: int) -> list[tuple[int, ImageResult]]:
        return list(zip([number for number, _ in batch], score_jobs([job for _, job in batch], self.detector)))


class ResultWriter(BasePredictionWriter):
    """Each rank appends its batches' results (JSON lines) to `<image_dir>/.geneval-rank<r>.jsonl`; at the end, rank 0
    reads every rank's part, deletes them and keeps the results in job order (`results`; None on other ranks)."""

    def __init__(self, image_dir: Path) -> None:
        super().__init__(write_interval="batch")
        self.image_dir = image_dir
        self.results: list[ImageResult] | None = None

    def _part(self, rank: int) -> Path:
        return self.image_dir / PARTS.format(rank=rank)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._part(trainer.global_rank).write_text("")  # a stale part of an interrupted run is overwritten

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with open(self._part(trainer.global_rank), "a") as file:
            file.writelines(json.dumps({"job": number, **asdict(result)}) + "\n" for number, result in prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier("geneval-parts-written")
        if trainer.is_global_zero:
            lines = []
            for rank in range(trainer.world_size):
                lines += [json.loads(line) for line in self._part(rank).read_text().splitlines() if line]
                self._part(rank).unlink()
            lines.sort(key=lambda line: line.pop("job"))
            self.results = [ImageResult(**line) for line in lines]
        trainer.strategy.barrier("geneval-parts-read")


def score_folder_on_devices(
    image_dir: str | Path, detector: Detector, batch_size: int, trainer: TrainerOptions
) -> list[ImageResult] | None:
    """`score_folder` in the predict loop of a Trainer with `trainer`'s flags: the results (in folder then sample
    order) on rank 0, None on the other ranks."""
    jobs = folder_jobs(image_dir, detector, batch_size)
    if not jobs:
        return []
    writer = ResultWriter(Path(image_dir))
    loader = DataLoader(list(enumerate(jobs)), batch_size=batch_size, collate_fn=as_list)
    built = trainer.build([writer])
    built.predict(DetectorModule(detector), loader, return_predictions=False)
    return writer.results if built.is_global_zero else None
