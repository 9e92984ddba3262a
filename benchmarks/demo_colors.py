"""Does the demo model draw the requested colour? Single-object colour prompts, scored by the exact palette.

    python -m benchmarks.demo_colors [--checkpoint CKPT] [--seeds 2]

Prompts: every colour x shape of the Shapes domain ("a photo of a red circle"), `--seeds` samples each; an image
counts as correct when the palette colour covering most non-background pixels is the requested one.
"""

import argparse

import numpy as np

from benchmarks.common import RESULTS, report
from sana_lightning.checkpoints import read_checkpoint, resolve_path
from sana_lightning.data.shapes import COLORS, SHAPES, dominant_color
from sana_lightning.images import captioned_grid, frame, to_pil
from sana_lightning.module import SanaFlowModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/sana/version_*/checkpoints/last.ckpt")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    checkpoint = resolve_path(args.checkpoint)
    module = SanaFlowModule.from_checkpoint(checkpoint)
    requests = [(c, s) for c in COLORS for s in SHAPES for _ in range(args.seeds)]
    prompts = [f"a photo of {'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in requests]
    images = module.generate(prompts, seeds=list(range(len(prompts))), progress=True)
    drawn = [dominant_color(np.asarray(to_pil(image))) for image in images]
    rows = []
    for color in COLORS:
        hits = [d == c for (c, _), d in zip(requests, drawn) if c == color]
        rows.append({"colour": color, "correct": sum(hits), "total": len(hits), "accuracy": sum(hits) / len(hits)})
    total = sum(r["correct"] for r in rows)
    rows.append({"colour": "all", "correct": total, "total": len(drawn), "accuracy": total / len(drawn)})
    report("demo_colors", rows, checkpoint=checkpoint, step=read_checkpoint(checkpoint)["global_step"])
    good = [d == c for (c, _), d in zip(requests, drawn)]  # framed green where the requested colour is drawn
    captioned_grid(frame(images, good), prompts, columns=args.seeds * len(SHAPES)).save(RESULTS / "demo_colors.png")
    print(f"requested colour drawn: {total}/{len(drawn)} = {total / len(drawn):.1%} ({checkpoint})")


if __name__ == "__main__":
    main()
