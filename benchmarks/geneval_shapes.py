"""GenEval-Shapes of a trained model (default: the report model), per task, next to ground truth (which scores 1.0).

    python -m benchmarks.geneval_shapes [--checkpoint CKPT] [--prompts-per-task 32] [--images-per-prompt 4]

The same pipeline the `generate` and `geneval` commands run: GenEval's folder layout, the exact Shapes detector,
GenEval's rules and summary. Prompts: the seeded Shapes evaluation scenes (as in data/shapes/metadata.jsonl).
Writes `geneval_shapes.png`: the model's first image of 4 prompts a task, each prompt under its image, framed green
where GenEval-Shapes passes it and red where it does not.
"""

import argparse
import tempfile

import torch

from benchmarks.common import RESULTS, pil_generator, report
from sana_lightning.data.shapes import evaluation_scenes, render
from sana_lightning.eval.folder import load_sample, score_folder, write_folder
from sana_lightning.eval.geneval import TASKS, format_summary, summarize
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.images import captioned_grid, frame, pil_to_tensor
from sana_lightning.module import SanaFlowModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/report/version_*/checkpoints/last.ckpt")
    parser.add_argument("--prompts-per-task", type=int, default=32)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    args = parser.parse_args()
    module = SanaFlowModule.from_checkpoint(args.checkpoint)
    scenes = evaluation_scenes(args.prompts_per_task, module.hparams.image_size)
    records = [s.metadata() for s in scenes]
    by_prompt = {s.prompt: s for s in scenes}
    detector = ShapesDetector()
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        truth = lambda prompts, seeds: [render(by_prompt[p].objects, module.hparams.image_size) for p in prompts]  # noqa: E731
        for name, generate in (("ground truth", truth), ("model", pil_generator(module))):
            folder = write_folder(f"{tmp}/{name.replace(' ', '_')}", records, args.images_per_prompt, generate)
            results = score_folder(folder, detector)
            summaries[name] = summarize(results)
            print(f"\n{name}\n{format_summary(summaries[name])}")
        # The model's first image of the first 4 prompts a task, framed green where the detector passes it.
        shown = [i for i, r in enumerate(records) if i % args.prompts_per_task < 4]
        images = torch.stack([pil_to_tensor(load_sample(folder / f"{i:05d}/samples/0000.png")) for i in shown]) / 255
        passed = [results[i * args.images_per_prompt].correct for i in shown]
        grid = captioned_grid(frame(images, passed), [records[i]["prompt"] for i in shown], columns=8)
        RESULTS.mkdir(parents=True, exist_ok=True)  # before `report` makes it: this runs first on a fresh checkout
        grid.save(RESULTS / "geneval_shapes.png")
    rows = [
        {"images": name, **{tag: s["tasks"][tag]["accuracy"] for tag in TASKS}, "overall": s["overall"]}
        for name, s in summaries.items()
    ]
    report("geneval_shapes", rows, checkpoint=args.checkpoint, summaries=summaries)


if __name__ == "__main__":
    main()
