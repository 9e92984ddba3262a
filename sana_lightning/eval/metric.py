"""GenEval accumulation as a torchmetrics `Metric`: per-task correct/total counts, summed across ranks."""

import torch
from torchmetrics import Metric

from sana_lightning.eval.geneval import TASKS


class GenEvalScore(Metric):
    """`update(tags, correct)` per image; `compute()` gives each task's accuracy (NaN if unseen) and `overall`,
    the unweighted mean over the tasks seen."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros(len(TASKS)), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(TASKS)), dist_reduce_fx="sum")

    def update(self, tags: list[str], correct: list[bool]) -> None:
        for tag, ok in zip(tags, correct):
            index = TASKS.index(tag)
            self.total[index] += 1
            self.correct[index] += float(ok)

    def compute(self) -> dict[str, torch.Tensor]:
        accuracy = self.correct / self.total  # NaN where a task had no image
        scores = {tag: accuracy[i] for i, tag in enumerate(TASKS)}
        scores["overall"] = accuracy[self.total > 0].mean()
        return scores
