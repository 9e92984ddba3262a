"""Logs a grid of samples for fixed prompts and seeds to TensorBoard (and as PNG in its run) during training."""

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from sana_lightning.images import captioned_grid, image_grid

DEFAULT_PROMPTS = (
    "a photo of a red circle",
    "a photo of a blue square",
    "a photo of a green triangle",
    "a photo of a yellow circle",
    "a photo of a purple square",
    "a photo of a white triangle",
    "a photo of an orange circle",
    "a photo of a black square",
)


class SampleGrid(L.Callback):
    """Every `every_n_steps` optimizer steps (and at the end of training) draw one image per prompt (fixed seeds)
    with the module's sampler and EMA weights; log the grid and its prompts to TensorBoard and save it as PNG in the
    TensorBoard run's `samples/`, each prompt under its image. Without a TensorBoard logger (as under fast_dev_run) it
    draws nothing."""

    def __init__(
        self, prompts: list[str] | None = None, every_n_steps: int = 250, seed: int = 0, columns: int = 8
    ) -> None:
        self.prompts = list(prompts or DEFAULT_PROMPTS)
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.columns = columns
        self._last_step = -1

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank takes the same branches and calls the collectives: generating (a sharded model needs every rank)
        # and broadcasting rank 0's log_dir (another rank's logger may number the version differently).
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        images = pl_module.generate(self.prompts, seeds=self.seed)
        pl_module.train(was_training)
        directory = Path(trainer.strategy.broadcast(tensorboard.log_dir)) / "samples"
        if not trainer.is_global_zero:
            return
        grid = image_grid(images, self.columns)
        tensorboard.experiment.add_image("samples", grid, trainer.global_step)
        legend = "\n".join(f"{i}. {p}" for i, p in enumerate(self.prompts))
        tensorboard.experiment.add_text("samples/prompts", legend, trainer.global_step)
        directory.mkdir(parents=True, exist_ok=True)
        captioned_grid(images, self.prompts, self.columns).save(directory / f"step_{trainer.global_step:07d}.png")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.global_step > 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module)
