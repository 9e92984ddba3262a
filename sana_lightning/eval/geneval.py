"""GenEval's scoring rules (Ghosh et al., 2023), written from its definition.

An image is correct when every `include` clause finds at least `count` detections of its class (colour and
position checked on the `count` most confident only) and no `exclude` clause finds `count` or more. Detections
count above confidence 0.3 (0.9 for the counting task), at most 16 per class. The overall score is the unweighted
mean of the six per-task image accuracies.
"""

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
# GenEval's object_names.txt: COCO-80 in COCO's order, under GenEval's names.
COCO_CLASSES = tuple(
    name.strip()
    for name in """person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant,
    stop sign, parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack,
    umbrella, handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove,
    skateboard, surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich,
    orange, broccoli, carrot, hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv,
    laptop, computer mouse, tv remote, computer keyboard, cell phone, microwave, oven, toaster, sink, refrigerator,
    book, clock, vase, scissors, teddy bear, hair drier, toothbrush""".split(",")
)
# COCO's own names (the `id2label` of transformers COCO checkpoints) where GenEval's differ.
COCO_TO_GENEVAL = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}

log = logging.getLogger(__name__)


def geneval_class(label: str) -> str:
    """GenEval's name for a detector's class label."""
    return COCO_TO_GENEVAL.get(label, label)


@dataclass
class Detection:
    """One detected object: box (x0, y0, x1, y1, pixels, y down), confidence, optional mask and colour."""

    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = field(default=None, repr=False)
    color: str | None = None


class Detector(Protocol):
    """What GenEval needs from a detector backend."""

    classes: frozenset[str]
    """The (GenEval) class names it can report."""

    def detect_batch(self, images: list[Image.Image]) -> list[dict[str, list[Detection]]]:
        """Per image, all its detections by class name, any confidence (neural detectors: one forward)."""

    def detect(self, image: Image.Image) -> dict[str, list[Detection]]:
        """`detect_batch([image])[0]`."""

    def colors_batch(self, groups: list[tuple[Image.Image, list[Detection], str]]) -> list[list[str]]:
        """Per (image, detections, class name) group, the GenEval colour name of each detection (CLIP: one
        forward for all crops)."""

    def colors(self, image: Image.Image, detections: list[Detection], classname: str) -> list[str]:
        """`colors_batch([(image, detections, classname)])[0]`."""


def relative_position(box_a, box_b) -> set[str]:
    """Relations of box A to box B (xyxy, image y down): offset of centres, each axis reduced by
    0.1 x (sum of both sizes on that axis), normalised by the offset's length; > 0.5 on an axis decides."""
    boxes = np.asarray([box_a, box_b], dtype=np.float64)[:, :4].reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def keep_confident(detections: dict[str, list[Detection]], tag: str) -> dict[str, list[Detection]]:
    """Per class: detections above the task's threshold, most confident first, at most 16."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    kept = {}
    for classname, found in detections.items():
        confident = sorted((d for d in found if d.score > threshold), key=lambda d: -d.score)[:MAX_OBJECTS]
        if confident:
            kept[classname] = confident
    return kept


def colored_groups(detections: dict[str, list[Detection]], metadata: dict) -> list[tuple[list[Detection], str]]:
    """The (detections, class name) groups whose colours `evaluate` reads, in its order: for each include clause
    with a colour and enough (thresholded, sorted) detections, its `count` most confident."""
    groups = []
    for clause in metadata.get("include", []):
        found = detections.get(clause["class"], [])[: clause["count"]]
        if "color" in clause and len(found) >= clause["count"]:
            groups.append((found, clause["class"]))
    return groups


def evaluate(
    image: Image.Image,
    detections: dict[str, list[Detection]],
    metadata: dict,
    detector: Detector,
    colors: list[list[str]] | None = None,
) -> tuple[bool, str]:
    """GenEval's verdict on one image given its (already thresholded, sorted) detections, and the reasons.
    `colors`: those of `colored_groups(detections, metadata)` when already known, else asked of the detector."""
    if colors is None:
        colors = [detector.colors(image, found, name) for found, name in colored_groups(detections, metadata)]
    group_colors = iter(colors)
    correct, reasons, matched_groups = True, [], []
    for clause in metadata.get("include", []):
        classname, count = clause["class"], clause["count"]
        found = detections.get(classname, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {classname}>={count}, found {len(found)}")
        if matched and "color" in clause:
            seen = next(group_colors)
            if seen.count(clause["color"]) < count:
                matched = False
                reasons.append(f"expected {clause['color']} {classname}>={count}, found {', '.join(seen)}")
        if matched and "position" in clause:
            relation, target = clause["position"]
            targets = matched_groups[target]
            if targets is None:
                matched = False
                reasons.append(f"no target for {classname} to be {relation}")
            else:
                for obj in found:
                    wrong = next((t for t in targets if relation not in relative_position(obj.box, t.box)), None)
                    if wrong is not None:
                        matched = False
                        found_relations = " and ".join(sorted(relative_position(obj.box, wrong.box))) or "no relation"
                        reasons.append(f"expected {classname} {relation} target, found {found_relations}")
                        break
        correct &= matched
        matched_groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        present = len(detections.get(clause["class"], []))
        if present >= clause["count"]:
            correct = False
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {present}")
    return correct, "\n".join(reasons)


def score_images(images: list[Image.Image], metadata: list[dict], detector: Detector) -> list[tuple[bool, str]]:
    """Detect (one `detect_batch`), threshold, colour (one `colors_batch` for every group of the batch that needs
    it) and evaluate generated images, each against its GenEval metadata."""
    kept = [keep_confident(found, m["tag"]) for found, m in zip(detector.detect_batch(images), metadata)]
    groups = [colored_groups(found, m) for found, m in zip(kept, metadata)]
    requests = [(image, found, name) for image, wanted in zip(images, groups) for found, name in wanted]
    colors = iter(detector.colors_batch(requests) if requests else [])
    return [
        evaluate(image, found, m, detector, [next(colors) for _ in wanted])
        for image, found, m, wanted in zip(images, kept, metadata, groups)
    ]


def score_image(image: Image.Image, metadata: dict, detector: Detector) -> tuple[bool, str]:
    """Detect, threshold and evaluate one generated image against its GenEval metadata."""
    return score_images([image], [metadata], detector)[0]


def validate_metadata(record: dict, where: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a GenEval record is a JSON object with 'tag', 'prompt' and 'include'")
    if record.get("tag") not in TASKS:
        raise ValueError(f"{where}: tag {record.get('tag')!r} is not a GenEval task ({', '.join(TASKS)})")
    if not isinstance(record.get("prompt"), str) or not isinstance(record.get("include"), list):
        raise ValueError(f"{where}: a GenEval record needs a 'prompt' string and an 'include' list")
    for clause in record["include"] + record.get("exclude", []):
        if not isinstance(clause, dict) or "class" not in clause or not isinstance(clause.get("count"), int):
            raise ValueError(f"{where}: every include/exclude clause needs 'class' and an integer 'count'")
        if "color" in clause and clause["color"] not in COLORS:
            raise ValueError(f"{where}: colour {clause['color']!r} is not one of GenEval's {', '.join(COLORS)}")
        if "position" in clause:
            relation, target = clause["position"]
            if relation not in RELATIONS or not 0 <= target < len(record["include"]):
                raise ValueError(
                    f"{where}: position {clause['position']!r} needs a relation of {RELATIONS} and an include index"
                )
    return record


def parse_record(line: str, where: str, fix: str) -> dict:
    """One GenEval record from a line of JSON; malformed JSON is a one-line error naming `where` and the `fix`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        problem = f"{error.msg} at column {error.colno}"
    else:
        return validate_metadata(record, where)
    raise ValueError(f"{where}: not valid JSON ({problem}): {fix}")  # outside `except`: no chained decoder error


def read_metadata(path: str | Path) -> list[dict]:
    """GenEval `metadata.jsonl`: one prompt record a line; a malformed line is an error naming it."""
    fix = "each line must be one JSON object (a GenEval record); fix that line or rewrite the file with `prompts`"
    lines = enumerate(Path(path).read_text().splitlines(), start=1)
    return [parse_record(line, f"{path}:{number}", fix) for number, line in lines if line.strip()]


def first_per_task(records: list[dict], per_task: int) -> list[dict]:
    """The first `per_task` records of each task, task by task (the prompts GenEval runs during training use)."""
    return [r for tag in TASKS for r in [r for r in records if r["tag"] == tag][:per_task]]


def check_vocabulary(records: Iterable[dict], detector: Detector) -> list[str]:
    """The metadata's classes that `detector` cannot report (such prompts never pass), warned about in one line."""
    wanted = dict.fromkeys(c["class"] for r in records for c in r.get("include", []) + r.get("exclude", []))
    missing = [c for c in wanted if c not in detector.classes]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        log.warning(
            f"{type(detector).__name__} cannot report {len(missing)} of the metadata's {len(wanted)} classes "
            f"({shown}): prompts with them never pass; score COCO prompts with --detector mask2former (or "
            "transformers), Shapes prompts with --detector shapes"
        )
    return missing


@dataclass
class ImageResult:
    tag: str
    prompt_index: int
    correct: bool
    reason: str = ""


def summarize(results: list[ImageResult]) -> dict:
    """GenEval's summary: % correct images, % prompts with at least one correct image, per-task accuracy and the
    overall score (mean over the tasks present)."""
    if not results:
        raise ValueError("no images to summarise")
    by_prompt: dict[int, bool] = {}
    for r in results:
        by_prompt[r.prompt_index] = by_prompt.get(r.prompt_index, False) or r.correct
    tasks = {}
    for tag in TASKS:
        chosen = [r.correct for r in results if r.tag == tag]
        if chosen:
            tasks[tag] = {"accuracy": sum(chosen) / len(chosen), "correct": sum(chosen), "total": len(chosen)}
    return {
        "images": len(results),
        "prompts": len(by_prompt),
        "correct_images": sum(r.correct for r in results) / len(results),
        "correct_prompts": sum(by_prompt.values()) / len(by_prompt),
        "tasks": tasks,
        "overall": float(np.mean([t["accuracy"] for t in tasks.values()])),
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"Total images: {summary['images']}",
        f"Total prompts: {summary['prompts']}",
        f"% correct images: {summary['correct_images']:.2%}",
        f"% correct prompts: {summary['correct_prompts']:.2%}",
        "",
    ]
    for tag, task in summary["tasks"].items():
        lines.append(f"{tag:<16} = {task['accuracy']:.2%} ({task['correct']} / {task['total']})")
    lines += ["", f"Overall score (avg. over tasks): {summary['overall']:.5f}"]
    return "\n".join(lines)
