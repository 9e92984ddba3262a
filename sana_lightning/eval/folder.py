"""GenEval's image-folder layout: `<dir>/<00000>/metadata.jsonl` + `samples/0000.png ...`, one folder a prompt."""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from sana_lightning.atomic import write_atomic
from sana_lightning.eval.geneval import Detector, ImageResult, check_vocabulary, parse_record, score_images

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


@dataclass
class ImageRequest:
    """One image to make: its prompt, the seed of its initial noise, where it goes and the prompt's GenEval record."""

    path: str
    prompt: str
    seed: int
    record: dict


def folder_requests(
    out_dir: str | Path, records: list[dict], images_per_prompt: int, seed: int = 0, prompts: slice = slice(None)
) -> list[ImageRequest]:
    """The images of GenEval's layout (`<out_dir>/<00000>/samples/0000.png`; image k of prompt i from seed
    `seed + i * images_per_prompt + k`) for the `prompts` slice of `records` (folders keep the records' indices)
    that are not on disk yet: a rerun makes only what is missing."""
    return [
        ImageRequest(str(path), records[index]["prompt"], seed + index * images_per_prompt + k, records[index])
        for index in range(len(records))[prompts]
        for k in range(images_per_prompt)
        if not (path := Path(out_dir, f"{index:05d}", "samples", f"{k:04d}.png")).exists()
    ]


def write_image(request: ImageRequest, image: Image.Image) -> None:
    """Write `image` to its request's path, and the prompt's `metadata.jsonl` with its first image: each under a
    temporary name beside it, then renamed, so a crash never leaves a half-written file (ranks never share a name)."""
    path = Path(request.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = path.parent.parent / "metadata.jsonl"
    if not metadata.exists():
        write_atomic(metadata, lambda file: file.write((json.dumps(request.record) + "\n").encode()), durable=False)
    write_atomic(path, lambda file: image.save(file, format="PNG"), durable=False)


def write_folder(
    out_dir: str | Path,
    records: list[dict],
    images_per_prompt: int,
    generate: Callable[[list[str], list[int]], list[Image.Image]],
    batch_size: int = 32,
    seed: int = 0,
    prompts: slice = slice(None),
) -> Path:
    """`folder_requests` made by `generate(prompts, seeds)` in this process, `batch_size` at a time (the `generate`
    command runs the same requests in Lightning's predict loop, on any number of devices)."""
    requests = folder_requests(out_dir, records, images_per_prompt, seed, prompts)
    for start in tqdm(range(0, len(requests), batch_size), desc="generating", unit="batch"):
        chunk = requests[start : start + batch_size]
        for request, image in zip(chunk, generate([r.prompt for r in chunk], [r.seed for r in chunk])):
            write_image(request, image)
    return Path(out_dir)


def load_sample(path: Path) -> Image.Image:
    """A generated image; an unreadable one is a one-line error naming it (it must not count as a failure)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        problem = str(error)
    raise ValueError(f"{path}: unreadable image ({problem}); delete it and rerun `generate` (it makes what is missing)")


@dataclass
class ScoreJob:
    """One image to score: its prompt folder's index and GenEval record, and its path."""

    prompt_index: int
    record: dict
    path: Path


def folder_jobs(image_dir: str | Path, detector: Detector, batch_size: int = 16) -> list[ScoreJob]:
    """Every `samples/NNNN.png` of every prompt folder, in folder then sample order; warn (one line each) about
    prompt folders with missing images and metadata classes the detector cannot report."""
    if batch_size < 1:
        raise ValueError(f"--batch_size {batch_size}: score at least one image at a time")
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
    return [
        ScoreJob(int(f.name), record, path) for f, record, paths in zip(folders, records, samples) for path in paths
    ]


def score_jobs(jobs: list[ScoreJob], detector: Detector) -> list[ImageResult]:
    """GenEval's verdicts on `jobs`, in one batch (one detector forward)."""
    scores = score_images([load_sample(job.path) for job in jobs], [job.record for job in jobs], detector)
    return [
        ImageResult(job.record["tag"], job.prompt_index, correct, reason)
        for job, (correct, reason) in zip(jobs, scores)
    ]


def score_folder(image_dir: str | Path, detector: Detector, batch_size: int = 16) -> list[ImageResult]:
    """Score every `samples/NNNN.png` of every prompt folder with GenEval's rules in this process, `batch_size` images
    at a time (one detector forward each; the results do not depend on it), warning as `folder_jobs` (the `geneval`
    command scores the same jobs in Lightning's predict loop, on any number of devices)."""
    jobs = folder_jobs(image_dir, detector, batch_size)
    results = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="scoring", unit="batch"):
        results += score_jobs(jobs[start : start + batch_size], detector)
    return results
