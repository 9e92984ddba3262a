"""The GenEval commands: `prompts` (metadata), `generate` (the image folder) and `geneval` (its score)."""

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

from sana_lightning.eval.folder import folder_requests, prompt_slice
from sana_lightning.eval.geneval import format_summary, read_metadata, summarize
from sana_lightning.eval.prompts import COCO_CLASSES, SHAPES_CLASSES, geneval_prompts
from sana_lightning.factory import make_detector
from sana_lightning.trainer_options import TrainerOptions, trainer_options


def generate_images(
    checkpoint: str,
    out_dir: str,
    metadata: str = "data/shapes/metadata.jsonl",
    images_per_prompt: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    prompts: str | None = None,
    trainer: TrainerOptions | None = None,
) -> Path:
    """Generate GenEval's image folder (`<out_dir>/00000/samples/0000.png ...`) in Lightning's predict loop on the
    `trainer`'s devices (`--trainer.devices 8`: the same files as 1 device); a rerun makes only what is missing.

    Args:
        checkpoint: A sana-lightning checkpoint or exported diffusers directory.
        out_dir: GenEval's image folder.
        metadata: GenEval-format metadata.jsonl.
        images_per_prompt: Images a prompt (seeds seed, seed+1, ...).
        batch_size: Images a forward.
        seed: First seed.
        steps: Sampler steps (default: the checkpoint's sampler).
        guidance_scale: Classifier-free guidance (default: the checkpoint's sampler).
        prompts: A slice of the metadata such as 0:50 (folders keep the metadata's indices).
        trainer: Devices, strategy and precision of the predict loop.
    """
    from sana_lightning.generation import generate_requests
    from sana_lightning.module import SanaFlowModule

    requests = folder_requests(out_dir, read_metadata(metadata), images_per_prompt, seed, prompt_slice(prompts))
    module = SanaFlowModule.from_checkpoint(checkpoint)
    sampler = replace(module.sampler, **{k: v for k, v in (("steps", steps), ("guidance_scale", guidance_scale)) if v})
    made = generate_requests(module, requests, sampler, batch_size, trainer or TrainerOptions())
    print(f"made {made} of the {len(requests)} missing images of {out_dir} in this process")
    return Path(out_dir)


def geneval_score(
    image_dir: str,
    detector: str = "shapes",
    detector_path: str | None = None,
    clip_path: str | None = None,
    out_file: str | None = None,
    device: str | None = None,
    batch_size: int = 16,
    trainer: TrainerOptions | None = None,
) -> dict:
    """Score a GenEval image folder in Lightning's predict loop on the `trainer`'s devices (the same results as 1
    device); print GenEval's summary and write per-image results + summary as JSON.

    Args:
        image_dir: GenEval's image folder (as `generate` writes it).
        detector: shapes (exact, the embedded default), mask2former (GenEval's) or transformers (detector + CLIP).
        detector_path: Local detector directory (mask2former / transformers).
        clip_path: Local CLIP directory for colours (mask2former / transformers).
        out_file: The JSON to write (default: <image_dir>/geneval.json).
        device: Short for one device of that kind (cuda, cuda:1); or use --trainer.*.
        batch_size: Images a detector forward.
        trainer: Devices, strategy and precision of the predict loop.
    """
    from sana_lightning.eval.scoring import score_folder_on_devices

    scorer = make_detector(detector, detector_path, clip_path)  # on the CPU: Lightning moves it to its device
    results = score_folder_on_devices(image_dir, scorer, batch_size, trainer_options(device, trainer))
    if results is None:  # not rank 0: it gathers and reports
        return {}
    summary = summarize(results)
    print(format_summary(summary))
    out = Path(out_file or Path(image_dir) / "geneval.json")
    out.write_text(json.dumps({"summary": summary, "images": [asdict(r) for r in results]}, indent=2))
    return summary


def write_prompts(
    out_file: str, vocabulary: Literal["coco", "shapes"] = "coco", prompts_per_task: int = 100, seed: int = 0
) -> Path:
    """Write GenEval-format `metadata.jsonl` prompts for GenEval's six tasks.

    Args:
        out_file: The metadata.jsonl to write.
        vocabulary: coco (COCO-80 with GenEval's names, for real models) or shapes (the embedded domain).
        prompts_per_task: Prompts for each of the six tasks.
        seed: Seeds the prompt draw.
    """
    classes = COCO_CLASSES if vocabulary == "coco" else SHAPES_CLASSES
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in geneval_prompts(classes, prompts_per_task, seed)))
    return out
