"""WebDataset datamodule: endless, seeded, equal-length batch streams per rank that skip (and count) bad samples."""

import glob
import io
import json
import logging
import random
import tarfile
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from sana_lightning.data.buckets import nearest_bucket, resize_crop, resolve_buckets
from sana_lightning.data.captions import CaptionRule, choose_caption
from sana_lightning.data.shapes import write_shapes_dataset

log = logging.getLogger(__name__)
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def expand_shards(spec: str) -> list[str]:
    """Shard URLs from a brace pattern (`train-{000000..000009}.tar`), a glob, or a comma-separated list.

    Local files are checked: a missing or empty shard is a one-line error naming the fix.
    """
    urls = [url for part in spec.split(",") for url in braceexpand(part.strip())]
    remote = [u for u in urls if "://" in u or u.startswith("pipe:")]
    files = []
    for pattern in (u for u in urls if u not in remote):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] * Path(pattern).exists()
        if not matches:
            raise FileNotFoundError(
                f"no shard matches '{pattern}': write shards with `python -m sana_lightning.cli shapes` "
                "(embedded Shapes) or `python -m sana_lightning.cli shards` (an image folder), or fix the shard path"
            )
        files += matches
    for path in files:
        _check_not_empty(path)
    return remote + files


def _check_not_empty(path: str) -> None:
    try:
        with tarfile.open(path) as tar:
            if tar.next() is None:
                raise ValueError(f"shard '{path}' holds no samples: rewrite it or drop it from the shard list")
    except tarfile.ReadError as error:
        raise ValueError(f"shard '{path}' is not a readable tar file ({error}): rewrite it or drop it") from error


def _captions(sample: dict) -> tuple[list[str], list[float] | None]:
    if "json" in sample:
        meta = json.loads(sample["json"])
        captions = meta.get("captions") or [meta.get("caption") or meta.get("prompt")]
        scores = meta.get("caption_scores")
    elif "txt" in sample:
        captions, scores = sample["txt"].decode().splitlines(), None
    else:
        raise ValueError(f"sample {sample.get('__key__')} has no caption (.json or .txt)")
    if scores is not None and len(scores) != len(captions):
        raise ValueError(f"sample {sample.get('__key__')} has {len(captions)} captions but {len(scores)} scores")
    kept = [i for i, c in enumerate(captions) if c]
    if not kept:
        raise ValueError(f"sample {sample.get('__key__')} has an empty caption")
    return [captions[i] for i in kept], None if scores is None else [float(scores[i]) for i in kept]


def _array(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


def decode_sample(sample: dict, image_size: int, buckets: list[tuple[int, int]] | None = None) -> dict:
    """A WebDataset sample -> `captions`, `scores` (or None) and either `image` `[3, H, W]` in [-1, 1] or a
    precomputed `latent` `[C, h, w]` (with `text_embeds` `[K, L, D]` and `text_mask` `[K, L]` when present).

    Captions come from `.json` (`captions` list, or `caption` / `prompt`; optional `caption_scores`) or `.txt` (one
    caption per line). Images go to the nearest of `buckets` ((height, width) pairs; default: the square
    `image_size`), resized to cover it and centre-cropped.
    """
    captions, scores = _captions(sample)
    decoded = {"captions": captions, "scores": scores}
    if "latent.npy" in sample:
        decoded["latent"] = _array(sample["latent.npy"]).float()
        if "text.npy" in sample:
            decoded["text_embeds"], decoded["text_mask"] = _array(sample["text.npy"]), _array(sample["mask.npy"])
        return decoded
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"sample {sample.get('__key__')} has neither an image ({'/'.join(IMAGE_KEYS)}) nor latent.npy")
    try:
        image = Image.open(io.BytesIO(sample[key])).convert("RGB")
    except OSError as error:  # PIL's message names only an in-memory buffer
        raise ValueError(f"its .{key} is not a readable image ({type(error).__name__})") from None
    height, width = nearest_bucket(image.height, image.width, buckets) if buckets else (image_size, image_size)
    image = resize_crop(image, height, width)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    decoded["image"] = pixels.permute(2, 0, 1).float().div(127.5).sub(1)
    return decoded


def collate(items: list[dict], chosen: list[int]) -> dict:
    """One batch from decoded samples of one shape and their chosen caption indices."""
    batch = {"caption": [item["captions"][k] for item, k in zip(items, chosen)], "key": [item["key"] for item in items]}
    for name in ("image", "latent"):
        if name in items[0]:
            batch[name] = torch.stack([item[name] for item in items])
    if "text_embeds" in items[0]:
        batch["text_embeds"] = torch.stack([item["text_embeds"][k] for item, k in zip(items, chosen)]).float()
        batch["text_mask"] = torch.stack([item["text_mask"][k] for item, k in zip(items, chosen)])
    return batch


def _shape_key(item: dict) -> tuple:
    """Samples batch together only with samples of the same kind and shape (one aspect-ratio bucket)."""
    return ("latent", *item["latent"].shape) if "latent" in item else ("image", *item["image"].shape)


class ShardStream(IterableDataset):
    """Batches drawn from resampled shards: `batches_per_epoch` per rank whatever the shard sizes (no DDP hangs).

    Randomness is seeded by (seed, epoch, rank, stream), and every batch carries its `position` (epoch, index), so
    a run resumed anywhere in an epoch continues with exactly the batches it would have seen (`set_position`).
    Unreadable shards and samples are skipped (logged with shard and key); each batch reports how many were skipped
    since the last and the `key` (shard:key) of every sample.
    A batch holds samples of one shape only (one aspect-ratio bucket); one caption per sample is chosen by
    `caption_rule` (`uniform`, or `weighted` by `caption_scores`^(1/`caption_temperature`)).
    """

    def __init__(
        self,
        urls: list[str],
        batch_size: int,
        image_size: int,
        batches_per_epoch: int,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        buckets: list[tuple[int, int]] | None = None,
        caption_rule: CaptionRule = "uniform",
        caption_temperature: float = 1.0,
    ) -> None:
        self.urls = urls
        self.buckets = buckets
        self.caption_rule = caption_rule
        self.caption_temperature = caption_temperature
        self.batch_size = batch_size
        self.image_size = image_size
        self.batches_per_epoch = batches_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self._skipped = 0
        self._shards_without_sample = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Make `iter()` deliver batches `start, start + 1, ...` of `epoch` (a resumed epoch continues where it was)."""
        if not 0 <= start < self.batches_per_epoch:
            raise ValueError(f"batch {start} is outside an epoch of {self.batches_per_epoch} batches")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        """Batches in a whole epoch (a resumed epoch delivers only its rest; Lightning counts the ones it had)."""
        return self.batches_per_epoch

    def _skip(self, error: Exception, sample: dict | None = None) -> bool:
        self._skipped += 1
        where = f"sample '{sample.get('__key__')}' of shard '{sample.get('__url__')}'" if sample else "a shard"
        log.warning("skipping unreadable data in %s: %s", where, error)
        return True

    def _shards(self, urls: list[str], rng: random.Random):
        while True:
            self._shards_without_sample += 1
            # Filling the shuffle buffer may open one shard per buffered sample before any is decoded.
            if self._shards_without_sample > 4 * len(urls) + self.shuffle_buffer + 4:
                raise RuntimeError(f"no readable sample in {len(urls)} shard(s) such as '{urls[0]}': rewrite them")
            yield {"url": rng.choice(urls)}

    def _samples(self, urls: list[str], rng: random.Random):
        raw = wds.tarfile_to_samples(handler=self._skip)(self._shards(urls, rng))
        for sample in wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(raw):
            try:
                item = decode_sample(sample, self.image_size, self.buckets)
            except Exception as error:  # a corrupt sample must not stop training
                self._skip(error, sample)
                continue
            self._shards_without_sample = 0
            item["key"] = f"{sample.get('__url__')}:{sample.get('__key__')}"
            yield (
                item,
                choose_caption(item["captions"], item["scores"], self.caption_rule, self.caption_temperature, rng),
            )

    def __iter__(self):
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        urls = self.urls[rank::world] if len(self.urls) >= world else self.urls  # split_by_node when possible
        # The epoch is `workers` interleaved streams: stream s makes batches s, s + workers, ... (the order in which
        # the DataLoader hands them out). Started at batch `start`, worker w continues stream (start + w) % workers,
        # so a resumed epoch delivers exactly the batches an uninterrupted one would have from there on.
        stream = (self.start + worker) % workers
        made = (self.start + worker) // workers
        rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{stream}")
        count = self.batches_per_epoch // workers + (stream < self.batches_per_epoch % workers)
        pending = defaultdict(list)
        samples = self._samples(urls, rng)
        for index in range(count):
            for item, chosen in samples:
                group = pending[_shape_key(item)]
                group.append((item, chosen))
                if len(group) == self.batch_size:
                    break
            items, chosen = zip(*group)
            group.clear()
            if index < made:
                continue  # delivered before the resume
            batch = collate(list(items), list(chosen))
            yield batch | {"skipped": self._skipped, "position": [self.epoch, stream + index * workers]}
            self._skipped = 0


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
        saved = (state["batches_per_epoch"], state["workers"])
        if saved != (self.batches_per_epoch, self.workers):
            raise ValueError(
                f"the checkpoint's data stream has batches_per_epoch={saved[0]} and num_workers={saved[1]} but the "
                f"config gives {self.batches_per_epoch} and {self.workers}: resume with the checkpoint's data settings"
            )
        self.epoch, self.next = state["epoch"], state["next"]


class _PositionedLoader(DataLoader):
    """A DataLoader whose every `iter()` starts its stream at the saved `StreamPosition`."""

    def __init__(self, dataset: ShardStream, position: StreamPosition, **kwargs) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.position = position

    def __iter__(self):
        self.dataset.set_position(*self.position.current())
        return super().__iter__()


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
        if image_size <= 0 or batch_size <= 0 or batches_per_epoch <= 0:
            raise ValueError("data.image_size, data.batch_size and data.batches_per_epoch must be positive")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.image_size = image_size
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_batches = val_batches
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = num_workers
        self.seed = seed
        self.buckets = resolve_buckets(buckets, image_size, bucket_multiple)
        self.caption_rule = caption_rule
        self.caption_temperature = caption_temperature
        self.position = StreamPosition(batches_per_epoch, max(1, self._workers(batches_per_epoch)))

    def _stream(self, spec: str, batches: int, seed: int) -> ShardStream:
        return ShardStream(
            expand_shards(spec),
            self.batch_size,
            self.image_size,
            batches,
            self.shuffle_buffer,
            seed,
            self.buckets,
            self.caption_rule,
            self.caption_temperature,
        )

    def _workers(self, batches: int) -> int:
        return min(self.num_workers, batches)

    def train_dataloader(self) -> DataLoader:
        stream = self._stream(self.train_shards, self.batches_per_epoch, self.seed)
        workers = self._workers(self.batches_per_epoch)
        return _PositionedLoader(stream, self.position, num_workers=workers, persistent_workers=False)

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
        stream = self._stream(self.val_shards, self.val_batches, self.seed + 1)
        return DataLoader(
            stream, batch_size=None, num_workers=self._workers(self.val_batches)
        )  # same batches at every validation

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
        super().__init__(train_shards=f"{root}/train-*.tar", val_shards=f"{root}/val-*.tar", **kwargs)
        self.root = root
        self.num_train = num_train
        self.num_val = num_val
        self.eval_prompts_per_task = eval_prompts_per_task

    def prepare_data(self) -> None:
        if not glob.glob(f"{self.root}/train-*.tar"):
            write_shapes_dataset(
                self.root,
                self.num_train,
                self.num_val,
                self.image_size,
                eval_prompts_per_task=self.eval_prompts_per_task,
                seed=self.seed,
            )
