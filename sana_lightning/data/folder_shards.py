"""Write WebDataset shards from an image folder with captions beside each image (real data)."""

import json
import logging
from pathlib import Path

import webdataset as wds
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_captions(image: Path) -> list[str] | None:
    """Captions of `image` from `<stem>.json` (`captions`, or `caption` / `prompt`) or `<stem>.txt` (one a line)."""
    meta, text = image.with_suffix(".json"), image.with_suffix(".txt")
    if meta.exists():
        try:
            record = json.loads(meta.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{meta}: not valid JSON ({error}): fix or delete the file") from error
        captions = record.get("captions") or [record.get("caption") or record.get("prompt")]
    elif text.exists():
        captions = text.read_text().splitlines()
    else:
        return None
    return [c.strip() for c in captions if c and c.strip()] or None


def write_folder_shards(
    image_dir: str, out_dir: str, prefix: str = "train", samples_per_shard: int = 1000
) -> list[str]:
    """Write `<out_dir>/<prefix>-%06d.tar` from the images under `image_dir` (recursively), keeping their bytes.

    Images without a caption file are skipped and counted. Returns the shard paths.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{image_dir}' does not exist: pass the folder holding your images")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images under '{image_dir}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped = 0
    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=samples_per_shard, verbose=0) as writer:
        for index, image in enumerate(tqdm(images, desc="shards", unit="img")):
            captions = read_captions(image)
            if captions is None:
                skipped += 1
                continue
            extension = image.suffix.lower().lstrip(".").replace("jpeg", "jpg")
            key = f"{index:09d}"
            writer.write({"__key__": key, extension: image.read_bytes(), "json": json.dumps({"captions": captions})})
    if skipped:
        log.warning("skipped %d of %d images without a .txt or .json caption beside them", skipped, len(images))
    if skipped == len(images):
        raise ValueError(
            f"none of the {len(images)} images under '{image_dir}' has a caption (.txt or .json beside it)"
        )
    return sorted(str(p) for p in out.glob(f"{prefix}-*.tar"))
