"""Write WebDataset shards from an image folder with captions beside each image (real data)."""

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from sana_lightning.data.shards import IMAGE_KEYS, write_shards

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = tuple(f".{key}" for key in IMAGE_KEYS)


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

    Args:
        image_dir: The folder of images, each with a .txt (one caption a line) or .json caption file beside it.
        out_dir: Where the shards go.
        prefix: Shard name prefix (train, val, ...).
        samples_per_shard: Images a shard.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{image_dir}' does not exist: pass the folder holding your images")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images under '{image_dir}'")
    captioned = [(index, image, read_captions(image)) for index, image in enumerate(images)]
    captioned = [(index, image, captions) for index, image, captions in captioned if captions is not None]
    if skipped := len(images) - len(captioned):
        log.warning("skipped %d of %d images without a .txt or .json caption beside them", skipped, len(images))
    if not captioned:
        raise ValueError(
            f"none of the {len(images)} images under '{image_dir}' has a caption (.txt or .json beside it)"
        )
    samples = (
        {
            "__key__": f"{index:09d}",
            image.suffix.lower().lstrip(".").replace("jpeg", "jpg"): image.read_bytes(),
            "json": json.dumps({"captions": captions}),
        }
        for index, image, captions in tqdm(captioned, desc="shards", unit="img")
    )
    return write_shards(out_dir, prefix, samples, samples_per_shard)
