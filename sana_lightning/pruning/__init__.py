"""SANA 1.5 depth pruning: block importance and pruning (`importance`), and their commands (`command`)."""

from sana_lightning.pruning.importance import (
    METRICS,
    CalibrationBatch,
    Importance,
    block_importance,
    blocks_to_remove,
    calibration_batch,
    module_importance,
    prune,
    select_blocks,
)

__all__ = [
    "METRICS",
    "CalibrationBatch",
    "Importance",
    "block_importance",
    "blocks_to_remove",
    "calibration_batch",
    "module_importance",
    "prune",
    "select_blocks",
]
