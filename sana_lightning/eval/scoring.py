"""GenEval scoring in Lightning's predict loop: a folder's images split over the devices of the Trainer's flags
(each rank scores its share, a batch a detector forward), the per-image results merged on rank 0 in folder then
sample order, so 1 or 8 devices give the same `geneval.json`."""

from pathlib import Path

from sana_lightning.eval.folder import ScoreJob, folder_jobs, score_jobs
from sana_lightning.eval.geneval import Detector, ImageResult
from sana_lightning.generation import HostModule, predict_on_devices
from sana_lightning.trainer_options import TrainerOptions


class DetectorModule(HostModule):
    """Predict step: GenEval's verdicts on a batch of (job number, job) items. The detector's torch models are
    submodules, so Lightning moves them to the rank's device; the detector is told its new device before scoring."""

    def __init__(self, detector: Detector) -> None:
        super().__init__(detector)
        self.detector = detector

    def predict_step(self, batch: list[tuple[int, ScoreJob]], batch_idx: int) -> list[tuple[int, ImageResult]]:
        return list(zip([number for number, _ in batch], score_jobs([job for _, job in batch], self.detector)))


def score_folder_on_devices(
    image_dir: str | Path, detector: Detector, batch_size: int, trainer: TrainerOptions
) -> list[ImageResult] | None:
    """`score_folder` in the predict loop of a Trainer with `trainer`'s flags: the results (in folder then sample
    order) on rank 0, None on the other ranks."""
    jobs = folder_jobs(image_dir, detector, batch_size)
    if not jobs:
        return []
    return predict_on_devices(DetectorModule(detector), jobs, image_dir, "geneval", ImageResult, batch_size, trainer)
