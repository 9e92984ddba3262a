"""The training stream: endless, seeded, equal-length batch streams per rank that skip (and count) bad samples, and
the position in it that checkpoints save so that a resumed run continues with exactly the next batch."""

import logging
import random
from collections import defaultdict
from dataclasses import dataclass

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from sana_lightning.data.captions import CaptionRule, choose_caption
from sana_lightning.data.shards import collate, decode_sample

log = logging.getLogger(__name__)


@dataclass
class StreamConfig:
    """The settings of a `ShardStream`."""

    batch_size: int
    """Samples in a batch (per rank)."""
    image_size: int
    """Side of the square crops images are decoded to when there are no `buckets`."""
    batches_per_epoch: int
    """Batches each rank delivers per epoch, whatever the shard sizes (shards are resampled)."""
    shuffle_buffer: int = 1000
    """Samples mixed in the shuffle buffer."""
    seed: int = 0
    """Seeds shard choice, shuffling and caption choice together with the epoch, rank and worker stream."""
    buckets: list[tuple[int, int]] | None = None
    """Aspect-ratio buckets as (height, width); None: square `image_size` crops."""
    caption_rule: CaptionRule = "uniform"
    """How one of a sample's captions is chosen: `uniform`, or `weighted` by its `caption_scores`."""
    caption_temperature: float = 1.0
    """Temperature T of the `weighted` rule: weights are caption_scores^(1/T)."""

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.batch_size <= 0 or self.batches_per_epoch <= 0:
            raise ValueError("data.image_size, data.batch_size and data.batches_per_epoch must be positive")


def _shape_key(item: dict) -> tuple:
    """Samples batch together only with samples of the same kind and shape (one aspect-ratio bucket)."""
    return ("latent", *item["latent"].shape) if "latent" in item else ("image", *item["image"].shape)


class _PassCounts:
    """The counters of one `iter()` over a stream: each pass has its own, so passes never mix their counts."""

    def __init__(self) -> None:
        self.skipped = 0
        self.shards_without_sample = 0

    def skip(self, error: Exception, sample: dict | None = None) -> bool:
        """Count and log unreadable data (a WebDataset error handler: True goes on)."""
        self.skipped += 1
        where = f"sample '{sample.get('__key__')}' of shard '{sample.get('__url__')}'" if sample else "a shard"
        log.warning("skipping unreadable data in %s: %s", where, error)
        return True


class ShardStream(IterableDataset):
    """Batches drawn from resampled shards: `batches_per_epoch` per rank whatever the shard sizes (no DDP hangs).

    Randomness is seeded by (seed, epoch, rank, stream), and every batch carries its `position` (epoch, index), so
    a run resumed anywhere in an epoch continues with exactly the batches it would have seen (`set_position`).
    Unreadable shards and samples are skipped (logged with shard and key); each batch reports how many were skipped
    since the last and the `key` (shard:key) of every sample.
    A batch holds samples of one shape only (one aspect-ratio bucket); one caption per sample is chosen by
    `caption_rule` (`uniform`, or `weighted` by `caption_scores`^(1/`caption_temperature`)).
    """

    def __init__(self, urls: list[str], config: StreamConfig) -> None:
        self.urls = urls
        self.config = config
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Make `iter()` deliver batches `start, start + 1, ...` of `epoch` (a resumed epoch continues where it was)."""
        if not 0 <= start < self.config.batches_per_epoch:
            raise ValueError(f"batch {start} is outside an epoch of {self.config.batches_per_epoch} batches")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        """Batches in a whole epoch (a resumed epoch delivers only its rest; Lightning counts the ones it had)."""
        return self.config.batches_per_epoch

    def _shards(self, urls: list[str], rng: random.Random, counts: _PassCounts):
        """Endless shard choices; raises when shard after shard yields no readable sample."""
        while True:
            counts.shards_without_sample += 1
            # Filling the shuffle buffer may open one shard per buffered sample before any is decoded.
            if counts.shards_without_sample > 4 * len(urls) + self.config.shuffle_buffer + 4:
                raise RuntimeError(f"no readable sample in {len(urls)} shard(s) such as '{urls[0]}': rewrite them")
            yield {"url": rng.choice(urls)}

    def _samples(self, urls: list[str], rng: random.Random, counts: _PassCounts):
        """Endless shuffled (decoded sample, chosen caption index) pairs."""
        config = self.config
        raw = wds.tarfile_to_samples(handler=counts.skip)(self._shards(urls, rng, counts))
        for sample in wds.shuffle(config.shuffle_buffer, initial=min(100, config.shuffle_buffer), rng=rng)(raw):
            try:
                item = decode_sample(sample, config.image_size, config.buckets)
            except Exception as error:  # a corrupt sample must not stop training
                counts.skip(error, sample)
                continue
            counts.shards_without_sample = 0
            item["key"] = f"{sample.get('__url__')}:{sample.get('__key__')}"
            yield (
                item,
                choose_caption(item["captions"], item["scores"], config.caption_rule, config.caption_temperature, rng),
            )

    def __iter__(self):
        config = self.config
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        urls = self.urls[rank::world] if len(self.urls) >= world else self.urls  # split_by_node when possible
        # The epoch is `workers` interleaved streams: stream s makes batches s, s + workers, ... (the order in which
        # the DataLoader hands them out). Started at batch `start`, worker w continues stream (start + w) % workers,
        # so a resumed epoch delivers exactly the batches an uninterrupted one would have from there on.
        stream = (self.start + worker) % workers
        made = (self.start + worker) // workers
        rng = random.Random(f"{config.seed}-{self.epoch}-{rank}-{stream}")
        count = config.batches_per_epoch // workers + (stream < config.batches_per_epoch % workers)
        counts = _PassCounts()
        pending = defaultdict(list)
        samples = self._samples(urls, rng, counts)
        for index in range(count):
            for item, chosen in samples:
                group = pending[_shape_key(item)]
                group.append((item, chosen))
                if len(group) == config.batch_size:
                    break
            items, chosen = zip(*group)
            group.clear()
            if index < made:
                counts.skipped = 0  # reported with this batch by the run that delivered it before the resume
                continue
            batch = collate(list(items), list(chosen))
            yield batch | {"skipped": counts.skipped, "position": [self.epoch, stream + index * workers]}
            counts.skipped = 0


class StreamPosition:
    """Where the training stream stands: the epoch and the next batch index the model has not consumed yet.

    It moves only when a batch reaches the training step (not when the loader prefetches), and it is saved in
    checkpoints, so a resumed run continues from the exact batch the interrupted one would have trained on next.
    """

    def __init__(self, batches_per_epoch: int, workers: int) -> None:
        self.batches_per_epoch = batches_per_epoch
        self.workers = workers
        self.epoch, self.next = 0, 0

    def consumed(self, epoch: int, index: int) -> None:
        """Batch `index` of `epoch` reached the training step."""
        self.epoch, self.next = epoch, index + 1

    def current(self) -> tuple[int, int]:
        """(epoch, first batch) of the next `iter()`: a finished epoch rolls over to the next one."""
        return (self.epoch + 1, 0) if self.next >= self.batches_per_epoch else (self.epoch, self.next)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "next": self.next,
            "batches_per_epoch": self.batches_per_epoch,
            "workers": self.workers,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved position; the stream layout (batches per epoch, workers) must be the saved one."""
        saved = (state["batches_per_epoch"], state["workers"])
        if saved != (self.batches_per_epoch, self.workers):
            raise ValueError(
                f"the checkpoint's data stream has batches_per_epoch={saved[0]} and num_workers={saved[1]} but the "
                f"config gives {self.batches_per_epoch} and {self.workers}: resume with the checkpoint's data settings"
            )
        self.epoch, self.next = state["epoch"], state["next"]


class PositionedLoader(DataLoader):
    """A DataLoader whose every `iter()` starts its stream at the saved `StreamPosition`."""

    def __init__(self, dataset: ShardStream, position: StreamPosition, **kwargs) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.position = position

    def __iter__(self):
        self.dataset.set_position(*self.position.current())
        return super().__iter__()
