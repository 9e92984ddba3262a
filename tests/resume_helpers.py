"""Resume-test helpers: a callback that signals its own process when a step starts; the logged losses of a run."""

import os
import signal
from pathlib import Path

import lightning as L
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def logged(run_dir: Path, tags=("train/loss", "val/loss")) -> dict[str, dict[int, float]]:
    """Scalars of the newest TensorBoard event file in `run_dir` (the resumed run's own, when it shares the folder)."""
    newest = max(Path(run_dir).glob("events.out.tfevents.*"), key=os.path.getmtime)
    events = EventAccumulator(str(newest))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags if tag in events.Tags()["scalars"]}


class SignalAt(L.Callback):
    """Send `signal_name` (SIGKILL: kill -9) to this process when step `step` (1-based) starts."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))
