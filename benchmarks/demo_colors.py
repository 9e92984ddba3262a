"""Does the demo model draw the requested colour? Single-object colour prompts, scored by the exact palette.

    python -m benchmarks.demo_colors [--checkpoint runs/sana/version_0/checkpoints/last.ckpt]

Prompts: every colour x shape of the Shapes domain ("a photo of a red circle"), `--seeds` samples each; an image
counts as correct when the palette colour covering most non-background pixels is the requested one.
"""

import argparse
import glob
import os

import numpy as np
import torch

from benchmarks.common import RESULTS, report
from sana_lightning.data.shapes import COLORS, SHAPES, dominant_color
from sana_lightning.images import image_grid, save_png
from sana_lightning.module import SanaFlowModule


def latest_checkpoint() -> str:
    found = sorted(glob.glob("runs/sana/version_*/checkpoints/last.ckpt"), key=os.path.getmtime)
    if not found:
        raise SystemExit("no checkpoint found: run `python -m sana_lightning.cli fit --config configs/base.yaml` first")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    checkpoint = args.checkpoint or latest_checkpoint()
    module = SanaFlowModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    requests = [(c, s) for c in COLORS for s in SHAPES for _ in range(args.seeds)]
    prompts = [f"a photo of {'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in requests]
    images = module.generate(prompts, seeds=list(range(len(prompts))), progress=True)
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    drawn = [dominant_color(p) for p in pixels]
    rows = []
    for color in COLORS:
        hits = [d == c for (c, _), d in zip(requests, drawn) if c == color]
        rows.append({"colour": color, "correct": sum(hits), "total": len(hits), "accuracy": sum(hits) / len(hits)})
    total = sum(r["correct"] for r in rows)
    rows.append({"colour": "all", "correct": total, "total": len(drawn), "accuracy": total / len(drawn)})
    report("demo_colors", rows, checkpoint=checkpoint, step=torch.load(checkpoint, weights_only=False)["global_step"])
    save_png(image_grid(images, columns=2 * args.seeds * len(SHAPES) // 2), RESULTS / "demo_colors.png", scale=3)
    print(f"requested colour drawn: {total}/{len(drawn)} = {total / len(drawn):.1%} ({checkpoint})")


if __name__ == "__main__":
    main()
