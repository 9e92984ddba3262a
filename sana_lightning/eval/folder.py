"""GenEval's image-folder layout: `<dir>/<00000>/metadata.jsonl` + `samples/0000.png ...`, one folder a prompt."""

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from sana_lightning.eval.geneval import Detector, ImageResult, score_image, validate_metadata


def write_folder(
    out_dir: str | Path,
    records: list[dict],
    images_per_prompt: int,
    generate: Callable[[list[str], list[int]], list[Image.Image]],
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """Generate `images_per_prompt` images a prompt (seed + prompt * images_per_prompt + k) in GenEval's layout.

    Resumable: prompts whose samples are all on disk are skipped, so an interrupted run regenerates nothing.
    """
    out = Path(out_dir)
    jobs = []
    for index, record in enumerate(records):
        folder = out / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n")
        for k in range(images_per_prompt):
            path = folder / "samples" / f"{k:04d}.png"
            if not path.exists():
                jobs.append((path, record["prompt"], seed + index * images_per_prompt + k))
    for start in tqdm(range(0, len(jobs), batch_size), desc="generating", unit="batch"):
        chunk = jobs[start : start + batch_size]
        images = generate([prompt for _, prompt, _ in chunk], [s for _, _, s in chunk])
        for (path, _, _), image in zip(chunk, images):
            temporary = path.with_suffix(".tmp.png")
            image.save(temporary)
            temporary.rename(path)  # a crash never leaves a half-written sample behind
    return out


def score_folder(image_dir: str | Path, detector: Detector) -> list[ImageResult]:
    """Score every `samples/NNNN.png` of every prompt folder with GenEval's rules."""
    root = Path(image_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(
            f"no GenEval prompt folders (00000/, 00001/, ...) in '{image_dir}': run `generate` first"
        )
    results = []
    for folder in tqdm(folders, desc="scoring", unit="prompt"):
        metadata_path = folder / "metadata.jsonl"
        try:
            metadata = validate_metadata(json.loads(metadata_path.read_text()), str(metadata_path))
        except json.JSONDecodeError as error:
            raise ValueError(f"{metadata_path}: not valid JSON ({error.msg})") from error
        for sample in sorted((folder / "samples").glob("[0-9][0-9][0-9][0-9].png")):
            correct, reason = score_image(Image.open(sample).convert("RGB"), metadata, detector)
            results.append(ImageResult(metadata["tag"], int(folder.name), correct, reason))
    return results
