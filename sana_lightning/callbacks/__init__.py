"""Lightning callbacks."""

from sana_lightning.callbacks.block_importance import BlockImportanceCallback
from sana_lightning.callbacks.block_norms import BlockUpdateNorms
from sana_lightning.callbacks.geneval import GenEvalCallback
from sana_lightning.callbacks.preemption import PreemptionCheckpoint
from sana_lightning.callbacks.sample_grid import SampleGrid

__all__ = ["BlockImportanceCallback", "BlockUpdateNorms", "GenEvalCallback", "PreemptionCheckpoint", "SampleGrid"]
