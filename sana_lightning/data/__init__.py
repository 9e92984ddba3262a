"""Data: the Shapes domain, WebDataset shard writing and the training datamodule."""

from sana_lightning.data.datamodule import ShapesDataModule, ShardDataModule

__all__ = ["ShardDataModule", "ShapesDataModule"]
