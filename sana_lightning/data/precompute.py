"""Encode image shards offline: latents (and optionally caption features) as new WebDataset shards, resumable."""

import hashlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Literal

import torch
import webdataset as wds
from tqdm.auto import tqdm

from sana_lightning.atomic import write_atomic
from sana_lightning.autoencoder import load_autoencoder
from sana_lightning.data.buckets import resolve_buckets
from sana_lightning.data.shards import decode_sample, encode_npy, expand_shards
from sana_lightning.text_encoder import TextEncoder

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_shard(url: str, image_size: int, buckets) -> tuple[list[tuple[str, dict, dict]], int]:
    """(key, decoded sample, its .json record) of every readable sample of one shard, and the skipped count."""
    samples, skipped = [], 0
    for sample in wds.tarfile_to_samples()([{"url": url}]):
        try:
            decoded = decode_sample(sample, image_size, buckets)
            record = json.loads(sample["json"]) if "json" in sample else {}
        except Exception as error:  # a corrupt sample is skipped (and counted), not fatal
            log.warning("skipping %s in %s: %s", sample.get("__key__"), url, error)
            skipped += 1
            continue
        samples.append((sample["__key__"], decoded, record))
    return samples, skipped


@torch.no_grad()
def precompute(
    shards: str,
    out_dir: str,
    autoencoder: str | None = None,
    autoencoder_subfolder: str | None = None,
    text_encoder: str | None = None,
    encode_text: bool = False,
    max_length: int = 300,
    complex_human_instruction: str | None = None,
    text_encoder_dtype: str = "float32",
    image_size: int = 32,
    buckets: str | list[tuple[int, int]] | None = None,
    bucket_multiple: int = 32,
    batch_size: int = 32,
    dtype: Literal["float32", "float16"] = "float32",
    device: str = "cpu",
) -> Path:
    """Write `out_dir/<shard name>` for every input shard: `latent.npy` per sample (the autoencoder's scaled
    latent of the image as training decodes it: same crop or aspect-ratio bucket), the captions (+ scores) in
    `.json`, and with `encode_text` every caption's features `text.npy` `[K, max_length, width]` and `mask.npy`.

    `autoencoder` / `text_encoder` (+ `max_length`, `complex_human_instruction`, `text_encoder_dtype`) are local
    paths (empty: pixel space / the embedded MiniLM) and settings that must be those of the model trained on the
    output. Finished shards are listed in `manifest.json` with their sample count and
    sha256 and are not redone when the command is run again.

    Args:
        shards: Input shards (brace pattern, glob or comma list).
        out_dir: Where the precomputed shards go.
        autoencoder: Local diffusers AutoencoderDC directory (empty: pixel space).
        autoencoder_subfolder: Its subfolder in a pipeline directory (e.g. vae).
        text_encoder: Local transformers text encoder directory (empty: the embedded MiniLM).
        encode_text: Also write every caption's features and mask.
        max_length: Caption tokens (Gemma in Sana: 300).
        complex_human_instruction: Sana's prompt prefix, if the model is trained with it.
        text_encoder_dtype: Weights dtype of the text encoder (bfloat16 halves Gemma's memory).
        image_size: Square crop side when there are no buckets.
        buckets: Aspect-ratio buckets: sana (its 40 ratios around image_size), a list of [height, width], or null.
        bucket_multiple: Bucket sides are multiples of this.
        batch_size: Images an autoencoder forward.
        dtype: Stored dtype of latents and features.
        device: Where the encoders run (cpu, cuda).
    """
    urls = expand_shards(shards)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codec = load_autoencoder(autoencoder, autoencoder_subfolder).to(device)
    texts = None
    if encode_text:
        texts = TextEncoder(
            text_encoder, max_length, complex_human_instruction, cache_size=0, dtype=text_encoder_dtype
        ).to(device)
    bucket_list = resolve_buckets(buckets, image_size, bucket_multiple)
    settings = {
        "autoencoder": autoencoder,
        "scaling_factor": codec.scaling_factor,
        "latent_channels": codec.latent_channels,
        "dtype": dtype,
        "text_encoder": (text_encoder or "embedded MiniLM") if encode_text else None,
        "max_length": max_length if encode_text else None,
        "text_encoder_dtype": text_encoder_dtype if encode_text else None,
        "image_size": image_size,
        "buckets": [list(b) for b in bucket_list] if bucket_list else None,
    }
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {**settings, "shards": {}}
    changed = {k: (manifest.get(k), v) for k, v in settings.items() if manifest.get(k) != v}
    if changed:
        raise ValueError(f"'{out_dir}' holds shards precomputed with other settings {changed}: use a new out_dir")
    progress = tqdm(urls, desc="precompute", unit="shard")
    for url in progress:
        name = Path(url).name
        target, entry = out / name, manifest["shards"].get(name)
        if entry and target.exists() and _sha256(target) == entry["sha256"]:
            continue  # finished in an earlier run
        samples, skipped = _read_shard(url, image_size, bucket_list)
        if not samples:
            raise ValueError(f"shard '{url}' has no readable sample ({skipped} skipped): rewrite it or drop it")
        latents, features = {}, {}
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            by_shape = defaultdict(dict)  # one encoder batch per image shape (aspect-ratio bucket)
            for key, decoded, _ in chunk:
                by_shape[decoded["image"].shape][key] = decoded["image"]
            for images in by_shape.values():
                latents.update(zip(images, codec.encode(torch.stack(list(images.values())).to(device)).float()))
            if texts is not None:  # every caption of the chunk in one batch
                embeds, mask = texts([c for _, d, _ in chunk for c in d["captions"]])
                counts = [len(d["captions"]) for _, d, _ in chunk]
                for (key, _, _), e, m in zip(chunk, embeds.split(counts), mask.split(counts)):
                    features[key] = {"text.npy": encode_npy(e, dtype), "mask.npy": encode_npy(m, "uint8")}
        tmp = target.with_suffix(".tmp")
        with wds.TarWriter(str(tmp)) as writer:
            for key, decoded, record in samples:
                meta = {k: v for k, v in record.items() if k not in ("caption", "prompt")}
                meta |= {"captions": decoded["captions"], "caption_scores": decoded["scores"]}
                meta["latent"] = {k: settings[k] for k in ("autoencoder", "scaling_factor", "dtype")}
                sample = {"__key__": key, "latent.npy": encode_npy(latents[key], dtype), "json": json.dumps(meta)}
                writer.write(sample | features.get(key, {}))
        os.replace(tmp, target)
        manifest["shards"][name] = {"samples": len(samples), "skipped": skipped, "sha256": _sha256(target)}
        write_atomic(manifest_path, lambda file: file.write(json.dumps(manifest, indent=2).encode()), durable=False)
        progress.set_postfix(samples=sum(e["samples"] for e in manifest["shards"].values()))
    return out
