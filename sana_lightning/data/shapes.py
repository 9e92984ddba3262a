"""The embedded "Shapes" domain: coloured shapes on grey, captioned for GenEval's six tasks.

Every scene is known exactly, so generated images can be scored with GenEval's own rules by an exact detector,
which makes the paper's claims measurable on a CPU in minutes.
"""

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from sana_lightning.data.shards import write_shards
from sana_lightning.eval.geneval import relative_position

# GenEval's ten colours, rendered as saturated, well separated RGB values.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 20),
    "green": (20, 170, 40),
    "blue": (30, 60, 230),
    "purple": (130, 20, 170),
    "pink": (255, 120, 190),
    "brown": (120, 70, 20),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
BACKGROUND = (128, 128, 128)
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass
class ShapeObject:
    """One shape: class, colour name, centre and size in pixels."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass
class Scene:
    """A rendered training/evaluation example: objects, GenEval metadata and captions."""

    tag: str
    objects: list[ShapeObject]
    include: list[dict]
    exclude: list[dict]
    prompt: str
    description: str

    def metadata(self) -> dict:
        """The GenEval `metadata.jsonl` record of this scene's prompt."""
        return {"tag": self.tag, "include": self.include, "exclude": self.exclude, "prompt": self.prompt}


def render(objects: list[ShapeObject], image_size: int) -> Image.Image:
    """Draw the objects, without anti-aliasing, so every object pixel has exactly its palette colour."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(obj.cx, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape '{obj.shape}': use one of {SHAPES}")
    return image


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: ShapeObject, with_color: bool) -> str:
    words = f"{obj.color} {obj.shape}" if with_color else obj.shape
    return f"{_article(words)} {words}"


class SceneSampler:
    """Samples non-overlapping scenes for each GenEval task with a seeded `random.Random`."""

    def __init__(self, image_size: int, rng: random.Random) -> None:
        self.size = image_size
        self.rng = rng

    def place(self, count: int, scale: tuple[float, float], region=None, placed=()) -> list[tuple[float, float, float]]:
        """`count` (cx, cy, size) that fit in `region` (x0, y0, x1, y1, fractions) and overlap nothing placed."""
        rx0, ry0, rx1, ry1 = region or (0, 0, 1, 1)
        for _ in range(1000):
            found = list(placed)
            for _ in range(count):
                size = self.rng.uniform(*scale) * self.size
                cx = self.rng.uniform(rx0 * self.size + size / 2 + 1, rx1 * self.size - size / 2 - 1)
                cy = self.rng.uniform(ry0 * self.size + size / 2 + 1, ry1 * self.size - size / 2 - 1)
                if all(max(abs(cx - x), abs(cy - y)) > (size + s) / 2 + 2 for x, y, s in found):  # 2px apart
                    found.append((cx, cy, size))
            if len(found) == len(placed) + count:
                return found[len(placed) :]
        raise ValueError(f"cannot place {count} shapes in a {self.size}px image: use image_size >= 24")

    def _objects(self, shapes: list[str], colors: list[str], places) -> list[ShapeObject]:
        return [ShapeObject(s, c, cx, cy, size) for s, c, (cx, cy, size) in zip(shapes, colors, places)]

    def sample(self, tag: str) -> Scene:
        rng = self.rng
        shape, other = rng.sample(SHAPES, 2)
        color, other_color = rng.sample(list(COLORS), 2)
        if tag in ("single_object", "colors"):
            objs = self._objects([shape], [color], self.place(1, (0.3, 0.5)))
            clause = {"class": shape, "count": 1} | ({"color": color} if tag == "colors" else {})
            prompt = f"a photo of {_noun(objs[0], tag == 'colors')}"
            return Scene(tag, objs, [clause], [], prompt, f"a photo of {_noun(objs[0], True)}")
        if tag in ("two_object", "color_attr"):
            objs = self._objects([shape, other], [color, other_color], self.place(2, (0.25, 0.4)))
            colored = tag == "color_attr"
            include = [{"class": o.shape, "count": 1} | ({"color": o.color} if colored else {}) for o in objs]
            prompt = f"a photo of {_noun(objs[0], colored)} and {_noun(objs[1], colored)}"
            description = f"a photo of {_noun(objs[0], True)} and {_noun(objs[1], True)}"
            return Scene(tag, objs, include, [], prompt, description)
        if tag == "counting":
            count = rng.randint(2, 4)
            objs = self._objects([shape] * count, [color] * count, self.place(count, (0.18, 0.26)))
            include = [{"class": shape, "count": count}]
            exclude = [{"class": shape, "count": count + 1}]
            prompt = f"a photo of {NUMBERS[count]} {PLURALS[shape]}"
            description = f"a photo of {NUMBERS[count]} {color} {PLURALS[shape]}"
            return Scene(tag, objs, include, exclude, prompt, description)
        if tag == "position":
            relation = rng.choice(RELATIONS)
            # objs[1] stands `relation` objs[0]: each is placed in its own half of the image.
            halves = {
                "left of": ((0.5, 0, 1, 1), (0, 0, 0.5, 1)),
                "right of": ((0, 0, 0.5, 1), (0.5, 0, 1, 1)),
                "above": ((0, 0.5, 1, 1), (0, 0, 1, 0.5)),
                "below": ((0, 0, 1, 0.5), (0, 0.5, 1, 1)),
            }
            first, second = halves[relation]
            while True:  # GenEval's rule must hold exactly for the ground truth, not just "in the other half"
                anchor = self.place(1, (0.25, 0.4), first)
                placed = anchor + self.place(1, (0.25, 0.4), second, anchor)
                objs = self._objects([other, shape], [other_color, color], placed)
                if relative_position(objs[1].box, objs[0].box) == {relation}:
                    break
            include = [{"class": other, "count": 1}, {"class": shape, "count": 1, "position": [relation, 0]}]
            prompt = f"a photo of {_noun(objs[1], False)} {relation} {_noun(objs[0], False)}"
            description = f"a photo of {_noun(objs[1], True)} {relation} {_noun(objs[0], True)}"
            return Scene(tag, objs, include, [], prompt, description)
        raise ValueError(f"unknown task '{tag}': use one of {TASKS}")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _sample(key: str, scene: Scene, image_size: int) -> dict:
    """The shard sample of a scene: its PNG and a `.json` with both captions, GenEval metadata and objects."""
    record = {
        "captions": [scene.prompt, scene.description],
        **scene.metadata(),
        "objects": [asdict(o) for o in scene.objects],
    }
    return {"__key__": key, "png": encode_png(render(scene.objects, image_size)), "json": json.dumps(record)}


def _write_split(directory: Path, split: str, count: int, per_shard: int, sampler: SceneSampler) -> list[str]:
    indices = tqdm(range(count), desc=f"shapes {split}", unit="img")
    samples = (_sample(f"{split}{i:08d}", sampler.sample(TASKS[i % len(TASKS)]), sampler.size) for i in indices)
    return write_shards(directory, split, samples, per_shard)


def evaluation_scenes(prompts_per_task: int, image_size: int = 32, seed: int = 2) -> list[Scene]:
    """Seeded Shapes scenes, `prompts_per_task` for each of the six tasks (their metadata are GenEval prompts)."""
    sampler = SceneSampler(image_size, random.Random(seed))
    return [sampler.sample(tag) for tag in TASKS for _ in range(prompts_per_task)]


def write_shapes_dataset(
    out_dir: str = "data/shapes",
    num_train: int = 24000,
    num_val: int = 512,
    image_size: int = 32,
    samples_per_shard: int = 2000,
    eval_prompts_per_task: int = 32,
    seed: int = 0,
) -> Path:
    """Write Shapes WebDataset shards (`train-*.tar`, `val-*.tar`) and GenEval `metadata.jsonl` to `out_dir`.

    Args:
        out_dir: The dataset folder.
        num_train: Training images.
        num_val: Validation images.
        image_size: Image side in pixels (at least 24).
        samples_per_shard: Images a shard.
        eval_prompts_per_task: GenEval prompts for each of the six tasks in metadata.jsonl.
        seed: Seeds the scenes (train: seed, val: seed + 1, prompts: seed + 2).
    """
    if image_size < 24:
        raise ValueError(f"image_size {image_size} is too small for Shapes scenes: use image_size >= 24")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _write_split(directory, "train", num_train, samples_per_shard, SceneSampler(image_size, random.Random(seed)))
    _write_split(directory, "val", num_val, samples_per_shard, SceneSampler(image_size, random.Random(seed + 1)))
    with open(directory / "metadata.jsonl", "w") as f:
        for scene in evaluation_scenes(eval_prompts_per_task, image_size, seed + 2):
            f.write(json.dumps(scene.metadata()) + "\n")
    return directory


def palette_distance(image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel distance of an HxWx3 uint8 image to each colour of the palette and to the background."""
    pixels = image.astype(np.float32)
    named = {**COLORS, "background": BACKGROUND}
    return {name: np.linalg.norm(pixels - np.array(rgb, np.float32), axis=-1) for name, rgb in named.items()}


def dominant_color(image: np.ndarray) -> str | None:
    """The palette colour covering most non-background pixels (nearest-colour assignment), or None if blank."""
    distances = palette_distance(image)
    names = list(distances)
    nearest = np.argmin(np.stack([distances[n] for n in names]), axis=0)
    counts = np.bincount(nearest.ravel(), minlength=len(names))[:-1]  # drop background
    return names[int(counts.argmax())] if counts.max() > 0 else None
