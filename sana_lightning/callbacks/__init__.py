"""Lightning callbacks."""

from sana_lightning.callbacks.sample_grid import SampleGrid

__all__ = ["SampleGrid"]
