"""Preemption: a checkpoint at the next step boundary when the job is told to stop (SIGTERM, SIGUSR1)."""

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (Lightning notes it) or SIGUSR1 (SLURM's warning signal before a time limit or preemption), finish
    the current step, save `last.ckpt` beside the run's checkpoints and stop with exit status 128 + the signal's
    number (143, 138): `fit --ckpt_path last` resumes exactly there. A SIGUSR1 handler that was already installed
    (Lightning's SLURM auto-requeue) runs after the save."""

    def __init__(self) -> None:
        self._received = False
        self._previous = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._received = False
        previous = signal.getsignal(signal.SIGUSR1)
        self._previous = previous if callable(previous) else None
        signal.signal(signal.SIGUSR1, self._note)

    def _note(self, signum, frame) -> None:
        self._received = True

    def on_train_end(self, trainer, pl_module) -> None:
        signal.signal(signal.SIGUSR1, self._previous or signal.SIG_DFL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self._received or trainer.received_sigterm
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)  # every rank saves and stops together
        if not stop:
            return
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        rank_zero_info(f"stopped by a signal at step {trainer.global_step}: saved {path}; resume with --ckpt_path last")
        if self._received and self._previous is not None:
            self._previous(signal.SIGUSR1, None)
        received = signal.SIGUSR1 if self._received else signal.SIGTERM
        raise SIGTERMException(128 + received)  # the shell's status of a process stopped by that signal

    @staticmethod
    def path(trainer) -> Path:
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        folder = checkpoint.dirpath if checkpoint is not None and checkpoint.dirpath else trainer.default_root_dir
        return Path(folder, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)
