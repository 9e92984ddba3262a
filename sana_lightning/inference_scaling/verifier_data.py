"""Verifier data from the Shapes domain: rendered scenes, captions true of them and hard negatives.

A caption is a structured claim (`Caption`) that writes itself as text and as a GenEval record, so whether it holds
for a scene is decided by GenEval's own rules on the scene's objects (`holds`). Each example is one image with a
positive caption and a hard negative: the positive with exactly one attribute made false (colour, count, position or
shape). Training captions vary (prefix, which colours are named, "A left of B" as "B right of A", the order of two
objects); a caption equal to an evaluation prompt is never a training caption. Each scene also has a near miss: the
scene after one mistake a small generator makes (an object recoloured, reshaped, dropped, added or two objects
swapped) that makes the positive false, so a judge learns to rank images for one prompt, as best-of-N needs. Images
are rendered, then degraded like a small generator's samples (soft edges, warped outlines, colour drift, noise):
never the model's own samples.
"""

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sana_lightning.data.shapes import COLORS, NUMBERS, PLURALS, SHAPES, TASKS, Scene, SceneSampler, ShapeObject, render
from sana_lightning.eval.geneval import Detection, colored_groups, evaluate, read_metadata

PREFIXES = ("a photo of", "an image of", "a picture of")
"""Training phrasings; held-out captions use GenEval's "a photo of" only."""
KINDS = ("color", "count", "position", "shape")
"""The hard negatives: one attribute of a true caption made false."""
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MISTAKES = ("recolor", "reshape", "drop", "add", "swap")
"""The near misses: one generator mistake applied to a scene."""


@dataclass(frozen=True)
class Mention:
    """`count` shapes of one class, of `color` when the caption names it."""

    shape: str
    color: str | None = None
    count: int = 1

    def words(self, numbered: bool) -> str:
        noun = PLURALS[self.shape] if self.count > 1 else self.shape
        words = f"{self.color} {noun}" if self.color else noun
        if numbered:
            return f"{NUMBERS[self.count]} {words}"
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


@dataclass(frozen=True)
class Caption:
    """A claim about a scene: one or two mentions, `mentions[0]` standing `relation` to `mentions[1]` if given;
    `numbered` writes the count as a word ("two red squares", GenEval's counting form)."""

    mentions: tuple[Mention, ...]
    relation: str | None = None
    numbered: bool = False
    prefix: str = "a photo of"

    @property
    def text(self) -> str:
        nouns = [m.words(self.numbered) for m in self.mentions]
        joiner = f" {self.relation} " if self.relation else " and "
        return f"{self.prefix} {joiner.join(nouns)}"

    def metadata(self) -> dict:
        """The caption as a GenEval record (the task decides only the detection threshold)."""
        clauses = [
            {"class": m.shape, "count": m.count} | ({"color": m.color} if m.color else {}) for m in self.mentions
        ]
        if self.numbered:
            (mention,) = self.mentions
            exclude = [{"class": mention.shape, "count": mention.count + 1}]
            return {"tag": "counting", "include": clauses, "exclude": exclude, "prompt": self.text}
        if self.relation:  # GenEval: include[1] stands `relation` include[0]
            include = [clauses[1], clauses[0] | {"position": [self.relation, 0]}]
            return {"tag": "position", "include": include, "exclude": [], "prompt": self.text}
        colored = any(m.color for m in self.mentions)
        tag = (
            ("colors" if colored else "single_object")
            if len(clauses) == 1
            else ("color_attr" if colored else "two_object")
        )
        return {"tag": tag, "include": clauses, "exclude": [], "prompt": self.text}


@dataclass
class VerifierExample:
    """One image of a scene with a caption true of it and a hard negative (`kind`: the attribute made false), and the
    image of a near miss: a scene one mistake away that the positive is false of."""

    image: Image.Image
    scene: Scene
    positive: Caption
    negative: Caption
    kind: str
    near_miss: Scene
    near_miss_image: Image.Image


def holds(caption: Caption, scene: Scene) -> bool:
    """Whether the caption is true of the scene, by GenEval's rules on the scene's exact objects."""
    found: dict[str, list[Detection]] = {}
    for obj in scene.objects:
        found.setdefault(obj.shape, []).append(Detection(obj.box, 1.0, color=obj.color))
    metadata = caption.metadata()
    colors = [[d.color for d in group] for group, _ in colored_groups(found, metadata)]
    return evaluate(None, found, metadata, None, colors)[0]


def scene_caption(scene: Scene, colored: list[bool] | None = None, prefix: str = "a photo of") -> Caption:
    """The scene's caption in its task's GenEval form (`colored`: which mentions name their colour; default as
    GenEval's prompt, all for the description)."""
    objs = scene.objects
    if scene.tag == "counting":
        mentions = (Mention(objs[0].shape, objs[0].color, len(objs)),)
    elif scene.tag == "position":  # objs[1] stands `relation` objs[0]
        mentions = (Mention(objs[1].shape, objs[1].color), Mention(objs[0].shape, objs[0].color))
    else:
        mentions = tuple(Mention(o.shape, o.color) for o in objs)
    if colored is None:
        colored = [scene.tag in ("colors", "color_attr")] * len(mentions)
    mentions = tuple(m if c else replace(m, color=None) for m, c in zip(mentions, colored))
    relation = scene.include[1]["position"][0] if scene.tag == "position" else None
    return Caption(mentions, relation, scene.tag == "counting", prefix)


def varied_caption(scene: Scene, rng: random.Random) -> Caption:
    """A true caption in a random phrasing: prefix, named colours, the relation's converse, two objects' order."""
    base = scene_caption(scene, [rng.random() < 0.5 for _ in scene.include], rng.choice(PREFIXES))
    if base.relation and rng.random() < 0.5:
        return replace(base, mentions=base.mentions[::-1], relation=OPPOSITE[base.relation])
    if len(base.mentions) == 2 and not base.relation and rng.random() < 0.5:
        return replace(base, mentions=base.mentions[::-1])
    return base


def negative_kinds(caption: Caption) -> list[str]:
    """The hard negatives a caption has: colour and shape always, position for a relation, count for one mention."""
    if caption.relation:
        return ["color", "position", "shape"]
    return ["color", "count", "shape"] if len(caption.mentions) == 1 else ["color", "shape"]


def hard_negative(caption: Caption, scene: Scene, kind: str, rng: random.Random) -> Caption:
    """`caption` (true of `scene`) with one attribute of kind `kind` made false."""
    mentions = list(caption.mentions)
    i = rng.randrange(len(mentions))
    true_color = {o.shape: o.color for o in scene.objects}
    if kind == "color":
        if len(mentions) == 2 and rng.random() < 0.5:  # swap the two objects' colours: attribute binding
            a, b = (true_color[m.shape] for m in mentions)
            mentions = [replace(mentions[0], color=b), replace(mentions[1], color=a)]
        else:
            wrong = [c for c in COLORS if c != true_color[mentions[i].shape]]
            mentions[i] = replace(mentions[i], color=rng.choice(wrong))
        return replace(caption, mentions=tuple(mentions))
    if kind == "count":
        count = mentions[0].count
        counts = [n for n in (count - 1, count + 1) if n in NUMBERS] if caption.numbered else [2, 3]
        return replace(caption, mentions=(replace(mentions[0], count=rng.choice(counts)),), numbered=True)
    if kind == "position":
        choice = rng.randrange(3)
        if choice == 0:  # the opposite relation
            return replace(caption, relation=OPPOSITE[caption.relation])
        if choice == 1:  # the objects swapped
            return replace(caption, mentions=caption.mentions[::-1])
        other_axis = [r for r in OPPOSITE if r not in (caption.relation, OPPOSITE[caption.relation])]
        return replace(caption, relation=rng.choice(other_axis))
    if kind == "shape":
        absent = [s for s in SHAPES if s not in true_color]
        mentions[i] = replace(mentions[i], shape=rng.choice(absent))
        return replace(caption, mentions=tuple(mentions))
    raise ValueError(f"unknown hard negative '{kind}': use one of {KINDS}")


def mistake(scene: Scene, kind: str, sampler: SceneSampler) -> Scene | None:
    """The scene after one generator mistake of `kind` (None where it does not apply or finds no room)."""
    objs, rng = list(scene.objects), sampler.rng
    i = rng.randrange(len(objs))
    if kind == "recolor":
        objs[i] = replace(objs[i], color=rng.choice([c for c in COLORS if c != objs[i].color]))
    elif kind == "reshape":
        objs[i] = replace(objs[i], shape=rng.choice([s for s in SHAPES if s != objs[i].shape]))
    elif kind == "drop" and len(objs) > 1:
        del objs[i]
    elif kind == "add" and len(objs) < 5:
        sizes = [o.size / sampler.size for o in objs]
        try:
            ((cx, cy, size),) = sampler.place(1, (min(sizes), max(sizes)), placed=[(o.cx, o.cy, o.size) for o in objs])
        except ValueError:  # no room left
            return None
        shape = rng.choice([objs[i].shape, rng.choice(SHAPES)])
        objs.append(ShapeObject(shape, rng.choice([objs[i].color, rng.choice(list(COLORS))]), cx, cy, size))
    elif kind == "swap" and len(objs) == 2:
        a, b = objs
        objs = [replace(a, cx=b.cx, cy=b.cy, size=b.size), replace(b, cx=a.cx, cy=a.cy, size=a.size)]
    elif kind not in MISTAKES:
        raise ValueError(f"unknown mistake '{kind}': use one of {MISTAKES}")
    else:
        return None
    return replace(scene, objects=objs)


def near_miss(scene: Scene, caption: Caption, sampler: SceneSampler) -> Scene | None:
    """A scene one random mistake away from `scene` that `caption` is false of (None if 20 tries find none)."""
    for _ in range(20):
        missed = mistake(scene, sampler.rng.choice(MISTAKES), sampler)
        if missed is not None and not holds(caption, missed):
            return missed
    return None


def augment(images: list[Image.Image], generator: torch.Generator) -> list[Image.Image]:
    """Renders degraded like a small generator's samples: warped outlines (a smooth random displacement of up to
    ~1 px), soft edges (Gaussian blur, sigma up to 0.9 px), colour drift (per-channel gain and offset) and noise."""
    x = torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images])).permute(0, 3, 1, 2).float()
    b, _, h, w = x.shape

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    flow = F.interpolate(normal(b, 2, 4, 4) * uniform(b, 1, 1, 1) * 1.6 / h, (h, w), mode="bicubic")  # 0.8 px
    grid = F.affine_grid(torch.eye(2, 3).expand(b, 2, 3), [b, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid + flow.permute(0, 2, 3, 1), padding_mode="border", align_corners=False)
    sigma = uniform(b, 1) * 0.9 + 1e-3
    kernel = torch.exp(-(torch.arange(-2.0, 3.0) ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # [b*3, 5], one per image channel
    x = F.pad(x.reshape(1, b * 3, h, w), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(F.conv2d(x, kernel[:, None, :, None], groups=b * 3), kernel[:, None, None, :], groups=b * 3)
    x = x.reshape(b, 3, h, w) * (1 + (uniform(b, 3, 1, 1) - 0.5) * 0.08) + normal(b, 3, 1, 1) * 4
    x = x + normal(b, 3, h, w) * uniform(b, 1, 1, 1) * 6
    return [Image.fromarray(a) for a in x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()]


def evaluation_prompts(paths: list[str]) -> set[str]:
    """Every prompt of the GenEval metadata files: never a training caption."""
    prompts = set()
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(
                f"evaluation prompts '{path}' not found: write them with `python -m sana_lightning.cli shapes` "
                "or pass --eval_metadata"
            )
        prompts.update(record["prompt"] for record in read_metadata(path))
    return prompts


def examples(
    seed: int,
    image_size: int = 32,
    held_out: bool = False,
    exclude: set[str] = frozenset(),
    augmented: bool = True,
    chunk: int = 64,
) -> Iterator[VerifierExample]:
    """An endless seeded stream of examples, the six tasks in turn, each task's negative kinds in turn.

    Training (`held_out=False`): varied captions, none in `exclude` (redrawn; a scene without such captions or a
    near miss is skipped). Held-out: the scene's GenEval prompt is the positive. Images (and their near misses') are
    augmented `chunk` at a time.
    """
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    sampler = SceneSampler(image_size, rng)
    turns, tasks = dict.fromkeys(TASKS, 0), itertools.cycle(TASKS)
    while True:
        found = []
        while len(found) < chunk:
            tag = next(tasks)
            scene = sampler.sample(tag)
            for _ in range(20):
                positive = scene_caption(scene) if held_out else varied_caption(scene, rng)
                kinds = negative_kinds(positive)
                kind = kinds[turns[tag] % len(kinds)]
                negative = hard_negative(positive, scene, kind, rng)
                if positive.text not in exclude and negative.text not in exclude:
                    break
            else:
                continue
            if not holds(positive, scene) or holds(negative, scene):
                raise AssertionError(f"{positive.text!r} / {negative.text!r}: not a true caption and a false one")
            missed = near_miss(scene, positive, sampler)
            if missed is None:
                continue
            turns[tag] += 1
            found.append((scene, positive, negative, kind, missed))
        images = [render(s.objects, image_size) for entry in found for s in (entry[0], entry[-1])]
        if augmented:
            images = augment(images, generator)
        for (scene, positive, negative, kind, missed), image, missed_image in zip(found, images[::2], images[1::2]):
            yield VerifierExample(image, scene, positive, negative, kind, missed, missed_image)
