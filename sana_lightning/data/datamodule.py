"""The Lightning datamodules: WebDataset shards (`ShardDataModule`) and the embedded Shapes domain
(`ShapesDataModule`), training on a `ShardStream` whose position is saved in checkpoints."""

import glob
from dataclasses import replace

import lightning as L
from torch.utils.data import DataLoader

from sana_lightning.data.buckets import resolve_buckets
from sana_lightning.data.captions import CaptionRule
from sana_lightning.data.shapes import write_shapes_dataset
from sana_lightning.data.shards import expand_shards, shard_pattern
from sana_lightning.data.stream import PositionedLoader, ShardStream, StreamConfig, StreamPosition


class ShardDataModule(L.LightningDataModule):
    """WebDataset shards for flow-matching training: raw images (`.png`/`.jpg`) or latents precomputed by the
    `precompute` command (`latent.npy`, optional `text.npy` / `mask.npy`), with captions in `.json` / `.txt`.

    `buckets`: `sana` (SANA's 40 aspect ratios at about `image_size`^2 pixels, sides multiples of
    `bucket_multiple`), a list of `[height, width]`, or None (square `image_size` crops). `caption_rule`: `uniform`,
    or `weighted` by the samples' `caption_scores`^(1/`caption_temperature`).
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        image_size: int = 32,
        batch_size: int = 32,
        batches_per_epoch: int = 500,
        val_batches: int = 4,
        shuffle_buffer: int = 1000,
        num_workers: int = 2,
        seed: int = 0,
        buckets: str | list[tuple[int, int]] | None = None,
        bucket_multiple: int = 32,
        caption_rule: CaptionRule = "uniform",
        caption_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.val_batches = val_batches
        self.num_workers = num_workers
        self.stream_config = StreamConfig(
            batch_size=batch_size,
            image_size=image_size,
            batches_per_epoch=batches_per_epoch,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            buckets=resolve_buckets(buckets, image_size, bucket_multiple),
            caption_rule=caption_rule,
            caption_temperature=caption_temperature,
        )
        self.position = StreamPosition(batches_per_epoch, max(1, self._workers(batches_per_epoch)))

    @property
    def batch_size(self) -> int:
        """Samples in a training batch (per rank)."""
        return self.stream_config.batch_size

    def _workers(self, batches: int) -> int:
        return min(self.num_workers, batches)

    def train_dataloader(self) -> DataLoader:
        stream = ShardStream(expand_shards(self.train_shards), self.stream_config)
        workers = self._workers(self.stream_config.batches_per_epoch)
        return PositionedLoader(stream, self.position, num_workers=workers, persistent_workers=False)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Advance the training position when a batch reaches the training step."""
        if self.trainer is not None and self.trainer.training and isinstance(batch, dict) and "position" in batch:
            self.position.consumed(*batch["position"])
        return batch

    def state_dict(self) -> dict:
        return {"train_position": self.position.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.trainer is not None and self.trainer.state.fn != "fit":
            return  # validate / test / predict from a checkpoint: the training position does not matter
        if "train_position" in state_dict:
            self.position.load_state_dict(state_dict["train_position"])

    def val_dataloader(self) -> DataLoader:
        if not self.val_shards or self.val_batches == 0:
            return []
        config = replace(self.stream_config, batches_per_epoch=self.val_batches, seed=self.stream_config.seed + 1)
        stream = ShardStream(expand_shards(self.val_shards), config)
        return DataLoader(stream, batch_size=None, num_workers=self._workers(self.val_batches))  # same every time

    def test_dataloader(self) -> DataLoader:
        """The validation batches (Shapes has no separate test split)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Validation batches, whose captions `predict` draws images for."""
        return self.val_dataloader()


class ShapesDataModule(ShardDataModule):
    """The embedded Shapes domain: writes its shards under `root` first if they are not there yet. Other options
    are `ShardDataModule`'s."""

    def __init__(
        self,
        root: str = "data/shapes",
        num_train: int = 24000,
        num_val: int = 512,
        eval_prompts_per_task: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(train_shards=shard_pattern(root, "train"), val_shards=shard_pattern(root, "val"), **kwargs)
        self.root = root
        self.num_train = num_train
        self.num_val = num_val
        self.eval_prompts_per_task = eval_prompts_per_task

    def prepare_data(self) -> None:
        if not glob.glob(self.train_shards):
            write_shapes_dataset(
                self.root,
                self.num_train,
                self.num_val,
                self.stream_config.image_size,
                eval_prompts_per_task=self.eval_prompts_per_task,
                seed=self.stream_config.seed,
            )
