"""Preemption: a checkpoint at the next step boundary when the job is told to stop (SIGTERM, SIGUSR1)."""

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or SIGUSR1 (SLURM's warning signal before a time limit or preemption), finish the current optimizer
    step (all its accumulated micro-batches; a validation under way finishes too), save `last.ckpt` beside the run's
    checkpoints and stop with exit status 128 + the signal's number (143, 138): `fit --ckpt_path last` resumes
    exactly there. The signals are noted here instead of by Lightning, which would stop without a checkpoint when one
    arrives during validation or at an epoch's end; a SIGUSR1 handler that was installed before (Lightning's SLURM
    auto-requeue) runs after the save."""

    def __init__(self) -> None:
        self._received: int | None = None
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only (a fit started from a thread is not preempted)
        for number in SIGNALS:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._note)

    def _note(self, signum, frame) -> None:
        self._received = signum

    def on_train_end(self, trainer, pl_module) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop._should_accumulate():
            return  # inside an accumulated step: its micro-batches' gradients are not in a checkpoint
        stop = self._received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)  # every rank saves and stops together
        if not stop:
            return
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        rank_zero_info(f"stopped by a signal at step {trainer.global_step}: saved {path}; resume with --ckpt_path last")
        received = self._received or signal.SIGTERM  # a rank the signal did not reach stops with the others
        previous = self._previous.get(received)
        if received == signal.SIGUSR1 and callable(previous):
            previous(received, None)
        raise SIGTERMException(128 + received)  # the shell's status of a process stopped by that signal

    @staticmethod
    def path(trainer) -> Path:
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        folder = checkpoint.dirpath if checkpoint is not None and checkpoint.dirpath else trainer.default_root_dir
        return Path(folder, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)
