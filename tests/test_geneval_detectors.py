"""GenEval's detectors for real images: class names, Mask2Former post-processing, colour on the masked object."""

import json
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_detr

from sana_lightning.data.shapes import TASKS, SceneSampler, render
from sana_lightning.eval.folder import score_folder, write_folder
from sana_lightning.eval.geneval import COCO_CLASSES, COLORS, Detection, check_vocabulary, read_metadata, score_image
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.eval.transformers_detector import (
    Mask2FormerDetector,
    TransformersDetector,
    instances,
    mask_box,
    masked_crop,
)
from sana_lightning.factory import make_detector

# djghosh13/geneval evaluation/object_names.txt in order (spaces written as "_").
GENEVAL_OBJECT_NAMES = [
    name.replace("_", " ")
    for name in """person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign
parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase
frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle
wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch
potted_plant bed dining_table toilet tv laptop computer_mouse tv_remote computer_keyboard cell_phone microwave oven
toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush""".split()
]


def coco_id2label() -> dict[int, str]:
    """COCO's own names, as in the `id2label` of transformers COCO checkpoints ("mouse", not "computer mouse")."""
    own = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}
    return {i: own.get(name, name) for i, name in enumerate(GENEVAL_OBJECT_NAMES)}


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    """A randomly initialised Mask2Former (tiny Swin backbone, COCO's own labels) with its image processor, saved."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessorPil,
        SwinConfig,
    )

    path = tmp_path_factory.mktemp("mask2former")
    labels = coco_id2label()
    stages = ["stage1", "stage2", "stage3", "stage4"]
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1] * 4, num_heads=[1] * 4, window_size=2, out_features=stages
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,  # GroupNorm(32, ...) in the pixel decoder
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=8,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(path)
    Mask2FormerImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_coco_detr(tmp_path_factory):
    """A randomly initialised DETR with COCO's own labels, saved."""
    return save_tiny_detr(tmp_path_factory.mktemp("detr-coco"), coco_id2label())


def test_every_official_geneval_class_is_one_the_detectors_can_report(
    tiny_mask2former, tiny_coco_detr, tiny_detector_and_clip, tmp_path, caplog
):
    from sana_lightning.eval.prompts import geneval_prompts

    assert list(COCO_CLASSES) == GENEVAL_OBJECT_NAMES  # one table, GenEval's names
    assert {c["class"] for r in geneval_prompts(prompts_per_task=100) for c in r["include"]} <= set(COCO_CLASSES)
    metadata = tmp_path / "metadata.jsonl"
    records = [{"tag": "single_object", "include": [{"class": n, "count": 1}], "prompt": n} for n in COCO_CLASSES]
    metadata.write_text("".join(json.dumps(r) + "\n" for r in records))
    records = read_metadata(metadata)
    clip = str(tiny_detector_and_clip[1])
    for detector in (Mask2FormerDetector(str(tiny_mask2former), clip), TransformersDetector(str(tiny_coco_detr), clip)):
        assert {"computer mouse", "tv remote", "computer keyboard"} <= detector.classes
        assert check_vocabulary(records, detector) == []
    with caplog.at_level(logging.WARNING):
        assert len(check_vocabulary(records, ShapesDetector())) == 80
    assert "ShapesDetector cannot report 80 of the metadata's 80 classes (person, bicycle, car," in caplog.text


def test_detections_carry_geneval_names(tiny_mask2former, tiny_coco_detr, tiny_detector_and_clip):
    clip = str(tiny_detector_and_clip[1])
    mask2former = Mask2FormerDetector(str(tiny_mask2former), clip)
    detr = TransformersDetector(str(tiny_coco_detr), clip)
    image = Image.new("RGB", (48, 40), "white")
    for detector, head in ((mask2former, "class_predictor"), (detr, "class_labels_classifier")):
        with torch.no_grad():  # every query says "mouse", COCO's name for GenEval's "computer mouse"
            getattr(detector.model, head).bias[detector.model.config.label2id["mouse"]] = 50.0
        assert set(detector.detect(image)) == {"computer mouse"}


def test_mask2former_post_processing_follows_mmdet():
    class_logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 4.0, 0.0]])  # 2 queries, 2 classes + "no object"
    mask_logits = torch.full((2, 4, 4), -10.0)
    mask_logits[0, :, 0] = 10.0  # query 0: the image's first column
    mask_logits[1, :, 2:] = 10.0  # query 1: only the padding
    pixel_mask = torch.zeros(4, 4, dtype=torch.long)
    pixel_mask[:, :2] = 1  # the image is 4 x 2 of the padded 4 x 4 input
    [(label, score, mask)] = instances(class_logits, mask_logits, pixel_mask, (8, 4))
    # Cropped to the image, resized x2 (bilinear): logits 10, 5, -5, -10 across; the padding's mask is gone.
    assert label == 0 and mask.shape == (8, 4) and mask[:, :2].all() and not mask[:, 2:].any()
    mean_probability = (torch.sigmoid(torch.tensor(10.0)) + torch.sigmoid(torch.tensor(5.0))) / 2
    assert score == pytest.approx((class_logits[0].softmax(-1)[0] * mean_probability).item(), rel=1e-5)
    assert mask_box(mask) == (0.0, 0.0, 2.0, 8.0)


def test_colour_is_judged_on_the_masked_object_as_geneval(tiny_mask2former, tiny_detector_and_clip):
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[4:28, 4:28] = (255, 0, 0)  # the box: red ...
    mask = np.zeros((32, 32), bool)
    mask[12:20, 12:20] = True
    pixels[mask] = (0, 0, 255)  # ... around a blue object (64 of its 576 pixels)
    image = Image.fromarray(pixels)
    masked, boxed = Detection((4, 4, 28, 28), 1.0, mask), Detection((4, 4, 28, 28), 1.0)
    crop = np.asarray(masked_crop(image, masked))
    inside = mask[4:28, 4:28]
    assert crop.shape == (24, 24, 3)
    assert (crop[inside] == (0, 0, 255)).all() and (crop[~inside] == 0x99).all()  # the object alone, on grey
    assert (np.asarray(masked_crop(image, boxed)) == (255, 0, 0)).all(-1).mean() > 0.85  # a box alone: mostly red
    # CLIP receives exactly that: the same colour as for the blue-on-grey crop given as a whole image.
    detector = Mask2FormerDetector(str(tiny_mask2former), str(tiny_detector_and_clip[1]))
    whole = Detection((0, 0, 24, 24), 1.0)
    assert detector.colors(image, [masked], "cup") == detector.colors(Image.fromarray(crop), [whole], "cup")


def test_mask2former_detector_scores_end_to_end_from_local_paths(tiny_mask2former, tiny_detector_and_clip):
    detector = make_detector("mask2former", str(tiny_mask2former), str(tiny_detector_and_clip[1]))
    with torch.no_grad():  # confident "cup" everywhere, so colours are judged
        detector.model.class_predictor.bias[detector.model.config.label2id["cup"]] = 50.0
    image = Image.new("RGB", (48, 40), "white")
    [cups] = detector.detect(image).values()
    assert all(d.mask.shape == (40, 48) and d.box == mask_box(d.mask) and 0.3 < d.score <= 1 for d in cups)
    metadata = {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a red cup"}
    ok, reason = score_image(image, metadata, detector)  # random weights: any verdict, but a colour was judged
    assert ok or reason.split(", found ")[1] in COLORS


def batch_images() -> list[Image.Image]:
    """Different images of one size, and one of another (a batch the processor would have to pad)."""
    scenes = [SceneSampler(48, random.Random(seed)).sample(TASKS[seed % len(TASKS)]) for seed in range(5)]
    return [render(s.objects, 48) for s in scenes] + [render(scenes[0].objects, 32)]


def assert_same_detections(batched: dict[str, list[Detection]], single: dict[str, list[Detection]]) -> None:
    assert list(batched) == list(single)  # the same labels, in the same order
    for name in single:
        assert len(batched[name]) == len(single[name])
        for a, b in zip(batched[name], single[name]):
            assert a.box == pytest.approx(b.box, abs=1e-5) and a.score == pytest.approx(b.score, abs=1e-5)


@pytest.mark.parametrize("backend", ["transformers", "mask2former"])
def test_batched_detection_and_colours_equal_one_by_one(
    backend, tiny_mask2former, tiny_coco_detr, tiny_detector_and_clip
):
    path = tiny_mask2former if backend == "mask2former" else tiny_coco_detr
    detector = make_detector(backend, str(path), str(tiny_detector_and_clip[1]))
    images = batch_images()
    batched = detector.detect_batch(images)
    assert len(batched) == len(images) and sum(len(d) for found in batched for d in found.values()) > len(images)
    for found, image in zip(batched, images):
        assert_same_detections(found, detector.detect(image))
    # Crops of every image, each group compared with its own class's colour prompts, in one CLIP forward.
    crops = [(image, found[:3]) for image, per_class in zip(images, batched) for found in per_class.values()]
    groups = [(image, found, name) for image, found in crops for name in ("cup", "bus")] + [(images[0], [], "cup")]
    assert detector.colors_batch(groups) == [detector.colors(*group) for group in groups]


def test_scoring_a_folder_in_batches_equals_one_by_one(tiny_detector_and_clip, tmp_path):
    detector = TransformersDetector(*map(str, tiny_detector_and_clip))
    with torch.no_grad():  # confident circles everywhere, so the colours of circles are judged
        detector.model.class_labels_classifier.bias[detector.model.config.label2id["circle"]] = 50.0
    sampler = SceneSampler(32, random.Random(0))
    scenes = [sampler.sample(tag) for tag in TASKS for _ in range(2)]
    write_folder(
        tmp_path, [s.metadata() for s in scenes], 2, lambda p, s: [render(scenes[i % 12].objects, 32) for i in s]
    )
    one_by_one = score_folder(tmp_path, detector, batch_size=1)
    assert len(one_by_one) == 24 and any(f"circle>=1, found {c}" in r.reason for r in one_by_one for c in COLORS)
    assert score_folder(tmp_path, detector, batch_size=4) == one_by_one


def test_make_detector_names_what_is_missing(tmp_path, tiny_detector_and_clip):
    with pytest.raises(ValueError, match="the mask2former detector needs --detector_path and --clip_path"):
        make_detector("mask2former", None, None)
    with pytest.raises(FileNotFoundError, match="Mask2Former model '.*nowhere' not found"):
        make_detector("mask2former", str(tmp_path / "nowhere"), str(tiny_detector_and_clip[1]))
    with pytest.raises(ValueError, match="use shapes, mask2former or transformers"):
        make_detector("yolo")
