"""Block-importance statistics during training, on a fixed calibration batch."""

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from sana_lightning.plots import figure_to_tensor, importance_figure
from sana_lightning.pruning import module_importance


class BlockImportanceCallback(L.Callback):
    """At the end of every `every_n_validations`-th validation, measure every block's importance (cosine, angular,
    loss delta) on the first validation batch (fixed noise, `num_sigmas` noise levels of the sampler) and log
    a scalar per block and metric, plus the bar charts and block x noise-level heat maps as an image."""

    def __init__(self, every_n_validations: int = 1, num_sigmas: int = 10, loss_delta: bool = True, seed: int = 0):
        self.every_n_validations = every_n_validations
        self.num_sigmas = num_sigmas
        self.loss_delta = loss_delta
        self.seed = seed
        self._validations = 0
        self._batch = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._batch is None:
            self._batch = batch  # the validation stream is fixed, so this is the same batch every time

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._batch is None:
            return
        self._validations += 1
        if self._validations % self.every_n_validations:
            return
        # On every rank (a sharded model needs them all); rank 0's batch is logged.
        importance = module_importance(pl_module, self._batch, self.num_sigmas, self.loss_delta, self.seed)
        if not trainer.is_global_zero:
            return
        for metric, scores in importance.scores.items():
            for block, value in enumerate(scores.tolist()):
                pl_module.log(f"importance/{metric}/{block:02d}", value, rank_zero_only=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                image = figure_to_tensor(importance_figure(importance))
                logger.experiment.add_image("importance", image, trainer.global_step)
