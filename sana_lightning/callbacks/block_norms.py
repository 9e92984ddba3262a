"""How much each transformer block changes its input during training."""

from functools import partial

import lightning as L
import torch


class BlockUpdateNorms(L.Callback):
    """Every `every_n_steps` training steps, log ||block(x) - x|| / ||x|| per block of `pl_module.transformer`.

    A block initialised as the identity (depth growth) starts at 0; the curve shows whether it is learning. Names
    carry the module's `block_labels` when it has them (e.g. `07_new`, `03_src3`). The norms go to the loggers at the
    step they were measured (through `self.log` Lightning would write them at its next logging step and again at
    every later one until the next measurement).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._handles: list = []
        self._norms: dict[int, torch.Tensor] = {}
        self._step = 0

    def _record(self, index: int, module, args, output) -> None:
        x = args[0].detach()
        self._norms[index] = (output.detach() - x).norm() / x.norm().clamp_min(1e-12)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._step = trainer.global_step
            blocks = pl_module.transformer.transformer_blocks
            self._handles = [b.register_forward_hook(partial(self._record, i)) for i, b in enumerate(blocks)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._handles:
            return
        for handle in self._handles:
            handle.remove()
        self._handles = []
        labels = getattr(pl_module, "block_labels", None) or [""] * len(self._norms)
        norms = {
            f"blocks/update_norm/{i:02d}{'_' + labels[i] if labels[i] else ''}": v.item()
            for i, v in self._norms.items()
        }
        for logger in trainer.loggers:
            logger.log_metrics(norms, step=self._step)
        self._norms = {}
