"""Learning-rate schedules of fixed length checked against the run they drive."""

from lightning.pytorch.utilities import rank_zero_warn


def check_schedule_length(scheduler, max_steps: int) -> None:
    """A schedule of fixed length (OneCycleLR's `total_steps`) must span the run (`max_steps`; -1: no limit): a
    shorter one fails at its last step, a longer one never anneals. Config interpolation (`total_steps:
    ${trainer.max_steps}`) fixes the length before a command-line `--trainer.max_steps` changes the run."""
    total = getattr(scheduler, "total_steps", None)
    if total is None or max_steps is None or max_steps < 0 or total == max_steps:
        return
    fix = f"set --model.init_args.lr_scheduler.init_args.total_steps {max_steps}"
    if total < max_steps:
        raise ValueError(f"the learning-rate schedule ends at step {total}, before max_steps {max_steps}: {fix}")
    rank_zero_warn(f"the learning-rate schedule runs {total} steps but training stops at {max_steps}: {fix}")
