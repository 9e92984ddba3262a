"""The WebDataset shard format: naming, writing, finding and decoding shards, and collating decoded samples.

A sample holds captions (`.json` or `.txt`) and either an image (`.png`, `.jpg`, ...) or a precomputed latent
(`latent.npy`, optionally with caption features `text.npy` / `mask.npy`).
"""

import glob
import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from sana_lightning.data.buckets import nearest_bucket, resize_crop

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def shard_pattern(directory: str | Path, prefix: str) -> str:
    """The glob matching the shards `write_shards` writes as `<directory>/<prefix>-000000.tar`, ..."""
    return f"{directory}/{prefix}-*.tar"


def write_shards(directory: str | Path, prefix: str, samples: Iterable[dict], samples_per_shard: int) -> list[str]:
    """Write `samples` (WebDataset dicts with a `__key__`) as `<directory>/<prefix>-%06d.tar`, `samples_per_shard`
    to a shard. Returns the paths of the `prefix` shards in `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=samples_per_shard, verbose=0) as writer:
        for sample in samples:
            writer.write(sample)
    return sorted(glob.glob(shard_pattern(out, prefix)))


def encode_npy(array: torch.Tensor, dtype: str) -> bytes:
    """A `.npy` field (`latent.npy`, `text.npy`, `mask.npy`) holding `array` as `dtype`."""
    buffer = io.BytesIO()
    np.save(buffer, array.cpu().numpy().astype(dtype), allow_pickle=False)
    return buffer.getvalue()


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
    """Raise a one-line error if the local shard `path` is not a tar file or holds nothing."""
    try:
        with tarfile.open(path) as tar:
            if tar.next() is None:
                raise ValueError(f"shard '{path}' holds no samples: rewrite it or drop it from the shard list")
    except tarfile.ReadError as error:
        raise ValueError(f"shard '{path}' is not a readable tar file ({error}): rewrite it or drop it") from error


def _captions(sample: dict) -> tuple[list[str], list[float] | None]:
    """The non-empty captions of a sample and their scores (None without `caption_scores`)."""
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
    """The tensor of a `.npy` field."""
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
