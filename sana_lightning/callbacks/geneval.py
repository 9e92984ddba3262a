"""GenEval during training: generate for a fixed set of prompts, score, log per-task accuracy and a sample grid."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from sana_lightning.eval.geneval import first_per_task, read_metadata, score_image
from sana_lightning.eval.metric import GenEvalScore
from sana_lightning.factory import make_detector
from sana_lightning.images import frame, image_grid, to_pil


class GenEvalCallback(L.Callback):
    """At every `every_n_validations`-th validation end: `images_per_prompt` images (fixed seeds) for the first
    `prompts_per_task` prompts of each task in `metadata`, scored with `detector` (`shapes`, or `transformers` with
    `detector_path` and `clip_path`). Logs `geneval/<task>` and `geneval/overall`, and a grid of the samples framed
    green (correct) or red (wrong). Prompts are split across ranks; the `GenEvalScore` metric sums the counts."""

    def __init__(
        self,
        metadata: str = "data/shapes/metadata.jsonl",
        prompts_per_task: int = 4,
        images_per_prompt: int = 1,
        every_n_validations: int = 1,
        detector: str = "shapes",
        detector_path: str | None = None,
        clip_path: str | None = None,
        seed: int = 0,
    ) -> None:
        self.metadata = metadata
        self.prompts_per_task = prompts_per_task
        self.images_per_prompt = images_per_prompt
        self.every_n_validations = every_n_validations
        self.detector_args = (detector, detector_path, clip_path)
        self.seed = seed
        self.score = GenEvalScore()
        self._validations = 0

    def setup(self, trainer, pl_module, stage) -> None:
        chosen = first_per_task(read_metadata(self.metadata), self.prompts_per_task)
        repeated = [r for r in chosen for _ in range(self.images_per_prompt)]
        self.jobs = [(record, self.seed + k) for k, record in enumerate(repeated)]
        self.detector = make_detector(*self.detector_args, device=str(pl_module.device))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations:
            return
        mine = self.jobs[trainer.global_rank :: trainer.world_size]
        # Every rank samples equally many images (a sharded model needs all ranks in every forward); padding is dropped.
        padded = mine + self.jobs[: -(-len(self.jobs) // trainer.world_size) - len(mine)]
        images = pl_module.generate([r["prompt"] for r, _ in padded], [s for _, s in padded])[: len(mine)]
        correct = [score_image(to_pil(image), record, self.detector)[0] for image, (record, _) in zip(images, mine)]
        self.score.update([r["tag"] for r, _ in mine], correct)
        scores = self.score.compute()  # summed over ranks
        self.score.reset()
        pl_module.log_dict({f"geneval/{k}": v for k, v in scores.items() if not torch.isnan(v)}, sync_dist=False)
        if trainer.is_global_zero and len(images):
            framed = frame(images.cpu(), correct)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image("geneval/samples", image_grid(framed), trainer.global_step)
