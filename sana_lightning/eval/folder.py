"""GenEval's image-folder layout: `<dir>/<00000>/metadata.jsonl` + `samples/0000.png ...`, one folder a prompt."""

import json
import logging
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from sana_lightning.eval.geneval import Detector, ImageResult, check_vocabulary, parse_record, score_image

log = logging.getLogger(__name__)
SAMPLES = "[0-9][0-9][0-9][0-9].png"


def prompt_slice(text: str | None) -> slice:
    """A Python-style slice of the prompts, e.g. `0:50`, `50:`, `::4`; None is all of them."""
    parts = (text or ":").split(":")
    try:
        if 2 <= len(parts) <= 3:
            return slice(*(int(part) if part.strip() else None for part in parts))
    except ValueError:
        pass
    raise ValueError(f"--prompts '{text}' is not a slice of the prompts: write start:stop[:step], e.g. 0:50")


def write_folder(
    out_dir: str | Path,
    records: list[dict],
    images_per_prompt: int,
    generate: Callable[[list[str], list[int]], list[Image.Image]],
    batch_size: int = 32,
    seed: int = 0,
    prompts: slice = slice(None),
) -> Path:
    """Generate `images_per_prompt` images a prompt (seed + prompt * images_per_prompt + k) in GenEval's layout,
    for the `prompts` slice of `records` (folders keep the records' indices); a prompt's folder is created with its
    first image.

    Resumable: prompts whose samples are all on disk are skipped, so an interrupted run regenerates nothing.
    """
    out = Path(out_dir)
    jobs = []
    for index in range(len(records))[prompts]:
        folder = out / f"{index:05d}"
        for k in range(images_per_prompt):
            path = folder / "samples" / f"{k:04d}.png"
            if not path.exists():
                jobs.append((path, records[index], seed + index * images_per_prompt + k))
    for start in tqdm(range(0, len(jobs), batch_size), desc="generating", unit="batch"):
        chunk = jobs[start : start + batch_size]
        images = generate([record["prompt"] for _, record, _ in chunk], [s for _, _, s in chunk])
        for (path, record, _), image in zip(chunk, images):
            metadata = path.parent.parent / "metadata.jsonl"
            if not metadata.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                metadata.write_text(json.dumps(record) + "\n")
            temporary = path.with_suffix(".tmp.png")
            image.save(temporary)
            temporary.rename(path)  # a crash never leaves a half-written sample behind
    return out


def load_sample(path: Path) -> Image.Image:
    """A generated image; an unreadable one is a one-line error naming it (it must not count as a failure)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        problem = str(error)
    raise ValueError(f"{path}: unreadable image ({problem}); delete it and rerun `generate` (it makes what is missing)")


def score_folder(image_dir: str | Path, detector: Detector) -> list[ImageResult]:
    """Score every `samples/NNNN.png` of every prompt folder with GenEval's rules; warn (one line each) about prompt
    folders with missing images and metadata classes the detector cannot report."""
    root = Path(image_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(
            f"no GenEval prompt folders (00000/, 00001/, ...) in '{image_dir}': run `generate` first"
        )
    fix = "rewrite it as one GenEval record (a JSON object), or delete the folder and rerun `generate`"
    records = [parse_record((f / "metadata.jsonl").read_text(), str(f / "metadata.jsonl"), fix) for f in folders]
    samples = [sorted((f / "samples").glob(SAMPLES)) for f in folders]
    check_vocabulary(records, detector)
    most = max(map(len, samples))
    for description, short in (
        ("no images", [f.name for f, s in zip(folders, samples) if not s]),
        (f"fewer than {most} images", [f.name for f, s in zip(folders, samples) if 0 < len(s) < most]),
    ):
        if short:
            shown = ", ".join(short[:5]) + (", ..." if len(short) > 5 else "")
            log.warning(
                f"{len(short)} of {len(folders)} prompt folders in '{image_dir}' have {description} ({shown}): "
                "the summary leaves those images out; rerun `generate` to make them"
            )
    results = []
    for folder, record, paths in tqdm(list(zip(folders, records, samples)), desc="scoring", unit="prompt"):
        for path in paths:
            correct, reason = score_image(load_sample(path), record, detector)
            results.append(ImageResult(record["tag"], int(folder.name), correct, reason))
    return results
