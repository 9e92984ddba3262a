"""GenEval-Shapes of a trained model (default: the report model), per task, next to ground truth (which scores 1.0).

    python -m benchmarks.geneval_shapes [--checkpoint CKPT] [--prompts-per-task 32] [--images-per-prompt 4]

The same pipeline the `generate` and `geneval` commands run: GenEval's folder layout, the exact Shapes detector,
GenEval's rules and summary. Prompts: the seeded Shapes evaluation scenes (as in data/shapes/metadata.jsonl).
"""

import argparse
import tempfile

from benchmarks.common import pil_generator, report
from sana_lightning.data.shapes import evaluation_scenes, render
from sana_lightning.eval.folder import score_folder, write_folder
from sana_lightning.eval.geneval import TASKS, format_summary, summarize
from sana_lightning.eval.shapes_detector import ShapesDetector
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
            summaries[name] = summarize(score_folder(folder, detector))
            print(f"\n{name}\n{format_summary(summaries[name])}")
    rows = [
        {"images": name, **{tag: s["tasks"][tag]["accuracy"] for tag in TASKS}, "overall": s["overall"]}
        for name, s in summaries.items()
    ]
    report("geneval_shapes", rows, checkpoint=args.checkpoint, summaries=summaries)


if __name__ == "__main__":
    main()
