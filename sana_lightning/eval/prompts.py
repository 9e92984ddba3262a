"""GenEval-format prompts: COCO-80 objects under GenEval's names for real models, the Shapes vocabulary for the embedded
one."""

import random
from pathlib import Path

from sana_lightning.data.shapes import SHAPES
from sana_lightning.eval.geneval import COCO_CLASSES, COLORS, RELATIONS, TASKS, read_metadata

SHAPES_CLASSES = SHAPES
IRREGULAR_PLURALS = {
    "person": "people",
    "sheep": "sheep",
    "skis": "pairs of skis",
    "scissors": "pairs of scissors",
    "knife": "knives",
    "bus": "buses",
    "couch": "couches",
    "sandwich": "sandwiches",
    "toothbrush": "toothbrushes",
    "wine glass": "wine glasses",
    "computer mouse": "computer mice",
}
NUMBERS = {2: "two", 3: "three", 4: "four"}


def plural(noun: str) -> str:
    return IRREGULAR_PLURALS.get(noun, noun + "s")


def with_article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def geneval_prompts(classes: tuple[str, ...] = COCO_CLASSES, prompts_per_task: int = 100, seed: int = 0) -> list[dict]:
    """`prompts_per_task` GenEval metadata records for each of the six tasks over `classes`, seeded."""
    if len(classes) < 2:
        raise ValueError("GenEval prompts need at least two object classes")
    rng = random.Random(seed)
    records = []
    for tag in TASKS:
        for _ in range(prompts_per_task):
            a, b = rng.sample(classes, 2)
            ca, cb = rng.sample(COLORS, 2)
            if tag == "single_object":
                record = {"include": [{"class": a, "count": 1}], "prompt": f"a photo of {with_article(a)}"}
            elif tag == "two_object":
                include = [{"class": a, "count": 1}, {"class": b, "count": 1}]
                record = {"include": include, "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}
            elif tag == "counting":
                n = rng.randint(2, 4)
                record = {
                    "include": [{"class": a, "count": n}],
                    "exclude": [{"class": a, "count": n + 1}],
                    "prompt": f"a photo of {NUMBERS[n]} {plural(a)}",
                }
            elif tag == "colors":
                record = {
                    "include": [{"class": a, "count": 1, "color": ca}],
                    "prompt": f"a photo of {with_article(f'{ca} {a}')}",
                }
            elif tag == "position":
                relation = rng.choice(RELATIONS)
                include = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}]
                record = {"include": include, "prompt": f"a photo of {with_article(a)} {relation} {with_article(b)}"}
            else:
                include = [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]
                prompt = f"a photo of {with_article(f'{ca} {a}')} and {with_article(f'{cb} {b}')}"
                record = {"include": include, "prompt": prompt}
            records.append({"tag": tag, "exclude": [], **record})
    return records


def read_prompts(path: str) -> list[dict]:
    """GenEval-format `metadata.jsonl`, or a text file with one prompt a line (as `{"prompt": ...}` records)."""
    if path.endswith(".jsonl"):
        return read_metadata(path)
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"'{path}' holds no prompts: one prompt a line, or a GenEval metadata.jsonl")
    return [{"prompt": p} for p in prompts]
