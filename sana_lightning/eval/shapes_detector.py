"""The exact detector of the Shapes domain: colour segmentation + shape geometry.

Every pixel takes its nearest palette colour (or background, or none when it is far from all of them); each
connected region of one colour is an object. Its class comes from how much of its bounding box it fills: the
ranges below hold every rasterised shape of 5-32 px (measured: square 1.0, circle 0.67-0.81, triangle 0.50-0.58).
Confidence is 1 inside the range with a square-ish box and falls linearly outside, so blobs that only vaguely
resemble a shape stay below GenEval's thresholds (0.3, and 0.9 for counting).
"""

import numpy as np
from PIL import Image
from scipy import ndimage

from sana_lightning.data.shapes import BACKGROUND, COLORS, SHAPES
from sana_lightning.eval.geneval import Detection

FILL_RANGES = {"square": (0.92, 1.0), "circle": (0.65, 0.84), "triangle": (0.48, 0.60)}


class ShapesDetector:
    """Detects the Shapes domain's circles, squares and triangles and reads their palette colour."""

    classes = frozenset(SHAPES)

    def __init__(self, max_color_distance: float = 90.0, min_area_fraction: float = 0.004, fill_margin: float = 0.1):
        self.max_color_distance = max_color_distance
        self.min_area_fraction = min_area_fraction
        self.fill_margin = fill_margin
        self._palette = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)
        self._names = ["background", *COLORS]

    def segment(self, image: Image.Image) -> np.ndarray:
        """Per-pixel palette index (0 = background) or -1 where no palette colour is close."""
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        distances = np.linalg.norm(pixels[..., None, :] - self._palette, axis=-1)
        labels = distances.argmin(-1)
        labels[distances.min(-1) > self.max_color_distance] = -1
        return labels

    def _classify(self, region: np.ndarray) -> tuple[str, float, tuple[float, float, float, float]]:
        ys, xs = np.nonzero(region)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        width, height = x1 - x0, y1 - y0
        fill = len(xs) / (width * height)
        outside = {s: max(lo - fill, fill - hi, 0.0) for s, (lo, hi) in FILL_RANGES.items()}
        shape = min(outside, key=outside.get)
        aspect = min(width, height) / max(width, height)
        score = max(0.0, 1 - outside[shape] / self.fill_margin) * min(1.0, max(0.0, 1 - (0.8 - aspect) / 0.3))
        return shape, score, (float(x0), float(y0), float(x1), float(y1))

    def detect_batch(self, images: list[Image.Image]) -> list[dict[str, list[Detection]]]:
        return [self.detect(image) for image in images]  # exact and cheap: nothing to gain from a batch

    def detect(self, image: Image.Image) -> dict[str, list[Detection]]:
        labels = self.segment(image)
        min_area = max(4, self.min_area_fraction * labels.size)
        found: dict[str, list[Detection]] = {}
        for index in range(1, len(self._names)):
            components, count = ndimage.label(labels == index)
            for component in range(1, count + 1):
                region = components == component
                if region.sum() < min_area:
                    continue
                shape, score, box = self._classify(region)
                found.setdefault(shape, []).append(Detection(box, score, region, self._names[index]))
        return found

    def colors_batch(self, groups: list[tuple[Image.Image, list[Detection], str]]) -> list[list[str]]:
        return [self.colors(*group) for group in groups]

    def colors(self, image: Image.Image, detections: list[Detection], classname: str) -> list[str]:
        return [d.color for d in detections]  # read off the palette by `detect`
