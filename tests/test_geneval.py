import json
import logging
import random

import pytest
import torch
from PIL import Image

from sana_lightning.data.shapes import COLORS as PALETTE
from sana_lightning.data.shapes import TASKS, SceneSampler, ShapeObject, render
from sana_lightning.eval.folder import prompt_slice, score_folder, write_folder
from sana_lightning.eval.geneval import (
    Detection,
    ImageResult,
    evaluate,
    format_summary,
    keep_confident,
    read_metadata,
    relative_position,
    score_image,
    summarize,
)
from sana_lightning.eval.metric import GenEvalScore
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.eval.transformers_detector import TransformersDetector

BLANK = Image.new("RGB", (64, 64))


class ColorsFromDetections:
    """Colour lookup for hand-built detections (the colour is part of the test input)."""

    def colors(self, image, detections, classname):
        return [d.color for d in detections]


def det(x0, y0, x1, y1, score=1.0, color=None):
    return Detection((x0, y0, x1, y1), score, color=color)


def verdict(detections, metadata):
    return evaluate(BLANK, keep_confident(detections, metadata["tag"]), metadata, ColorsFromDetections())


def test_counting_needs_confidence_above_0_9_and_respects_exclude():
    meta = {
        "tag": "counting",
        "include": [{"class": "dog", "count": 2}],
        "exclude": [{"class": "dog", "count": 3}],
        "prompt": "two dogs",
    }
    assert verdict({"dog": [det(0, 0, 5, 5, 0.95), det(10, 10, 15, 15, 0.91)]}, meta)[0]
    ok, reason = verdict({"dog": [det(0, 0, 5, 5, 0.95), det(10, 10, 15, 15, 0.9)]}, meta)  # 0.9 is not above 0.9
    assert not ok and reason == "expected dog>=2, found 1"
    ok, reason = verdict({"dog": [det(0, 0, 5, 5, 0.95)] * 3}, meta)
    assert not ok and reason == "expected dog<3, found 3"
    other = {"tag": "two_object", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"}
    assert (
        verdict({"dog": [det(0, 0, 5, 5, 0.31)]}, other)[0] and not verdict({"dog": [det(0, 0, 5, 5, 0.3)]}, other)[0]
    )


def test_colour_is_checked_on_the_most_confident_objects_only():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    assert verdict({"car": [det(0, 0, 5, 5, 0.5, "blue"), det(9, 9, 20, 20, 0.8, "red")]}, meta)[0]
    ok, reason = verdict({"car": [det(0, 0, 5, 5, 0.9, "blue"), det(9, 9, 20, 20, 0.8, "red")]}, meta)
    assert not ok and reason == "expected red car>=1, found blue"


def test_position_rule_and_its_threshold_boundary():
    # Equal 10x10 boxes on one row: the x offset is reduced by 0.1 * (10 + 10) = 2 before normalising.
    assert relative_position((0, 0, 10, 10), (30, 0, 40, 10)) == {"left of"}
    assert relative_position((0, 0, 10, 10), (1, 0, 11, 10)) == set()  # |dx| = 1 < 2: no relation at all
    # Diagonal offset (dx, dy) = (-10, -9): revised (-8, -7) / 13.45 = (-0.59, -0.52): both relations.
    assert relative_position((0, 0, 10, 10), (10, 9, 20, 19)) == {"left of", "above"}
    # (dx, dy) = (-10, -6): dy revised -4 / 11.66 = -0.34: left of only.
    assert relative_position((0, 0, 10, 10), (10, 6, 20, 16)) == {"left of"}
    meta = {
        "tag": "position",
        "prompt": "a cat left of a dog",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
    }
    assert verdict({"dog": [det(30, 0, 40, 10)], "cat": [det(0, 0, 10, 10)]}, meta)[0]
    ok, reason = verdict({"dog": [det(0, 0, 10, 10)], "cat": [det(30, 0, 40, 10)]}, meta)
    assert not ok and reason == "expected cat left of target, found right of"
    ok, reason = verdict({"cat": [det(0, 0, 10, 10)]}, meta)
    assert not ok and reason == "expected dog>=1, found 0\nno target for cat to be left of"


def test_malformed_metadata_names_the_line(tmp_path):
    path = tmp_path / "metadata.jsonl"
    good = json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"})
    path.write_text(good + '\n{"tag": "colors" "prompt": "x"}\n')
    with pytest.raises(
        ValueError, match=r"metadata.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 18\)"
    ) as error:
        read_metadata(path)
    assert "fix that line" in str(error.value) and error.value.__context__ is None  # the CLI prints this one line
    path.write_text(good + "\n" + json.dumps({"tag": "style", "include": [], "prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: tag 'style' is not a GenEval task"):
        read_metadata(path)
    path.write_text(
        json.dumps({"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "teal"}], "prompt": "x"})
    )
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: colour 'teal' is not one of GenEval's"):
        read_metadata(path)


def ground_truth(size=32, per_task=40, seed=0):
    sampler = SceneSampler(size, random.Random(seed))
    return [sampler.sample(tag) for tag in TASKS for _ in range(per_task)]


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_detector_scores_ground_truth_of_every_task_at_100_percent(size):
    detector = ShapesDetector()
    results = [score_image(render(s.objects, size), s.metadata(), detector) for s in ground_truth(size)]
    assert all(ok for ok, _ in results), [why for ok, why in results if not ok][:3]


def test_shapes_detector_scores_wrong_images_at_0_percent():
    detector = ShapesDetector()
    for scene in ground_truth(per_task=15, seed=1):
        meta, objects = scene.metadata(), scene.objects
        if scene.tag in ("colors", "color_attr"):
            wrong = [
                ShapeObject(o.shape, next(c for c in PALETTE if c != o.color), o.cx, o.cy, o.size) for o in objects
            ]
        elif scene.tag == "counting":
            wrong = objects[:-1]
        elif scene.tag == "position":
            a, b = objects  # swap the two objects' places
            wrong = [
                ShapeObject(a.shape, a.color, b.cx, b.cy, a.size),
                ShapeObject(b.shape, b.color, a.cx, a.cy, b.size),
            ]
        else:  # single / two objects: a shape the prompt does not ask for, in the same places
            other = next(s for s in ("circle", "square", "triangle") if s not in {o.shape for o in objects})
            wrong = [ShapeObject(other, o.color, o.cx, o.cy, o.size) for o in objects]
        assert not score_image(render(wrong, 32), meta, detector)[0], (scene.tag, scene.prompt)


def test_summary_and_metric_follow_geneval():
    results = [
        ImageResult("single_object", 0, True),
        ImageResult("single_object", 0, False),
        ImageResult("counting", 1, False),
        ImageResult("counting", 2, True),
        ImageResult("counting", 2, True),
    ]
    summary = summarize(results)
    assert summary["correct_prompts"] == pytest.approx(2 / 3) and summary["correct_images"] == 0.6
    assert summary["overall"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert "counting         = 66.67% (2 / 3)" in format_summary(summary)
    metric = GenEvalScore()
    metric.update([r.tag for r in results[:2]], [r.correct for r in results[:2]])
    metric.update([r.tag for r in results[2:]], [r.correct for r in results[2:]])
    scores = metric.compute()
    assert scores["overall"].item() == pytest.approx(summary["overall"]) and torch.isnan(scores["position"])


def test_folder_layout_round_trip_and_resume(tmp_path):
    scenes = ground_truth(per_task=1)
    calls = []

    def generate(prompts, seeds):
        calls.append(seeds)
        by_prompt = {s.prompt: s for s in scenes}
        return [render(by_prompt[p].objects, 32) for p in prompts]

    records = [s.metadata() for s in scenes]
    write_folder(tmp_path, records, 2, generate, batch_size=5)
    assert (tmp_path / "00005/samples/0001.png").exists() and json.loads(
        (tmp_path / "00005/metadata.jsonl").read_text()
    ) == records[5]
    assert sorted(sum(calls, [])) == list(range(12))
    (tmp_path / "00003/samples/0000.png").unlink()
    calls.clear()
    write_folder(tmp_path, records, 2, generate)
    assert calls == [[6]]  # only the missing image is generated again
    summary = summarize(score_folder(tmp_path, ShapesDetector()))
    assert summary["overall"] == 1.0 and summary["images"] == 12


def test_generate_takes_a_slice_of_the_prompts_and_makes_folders_as_it_goes(tmp_path):
    records = [s.metadata() for s in ground_truth(per_task=1)]
    folders_before_each_batch = []

    def generate(prompts, seeds):
        folders_before_each_batch.append(sorted(p.name for p in tmp_path.iterdir()))
        assert seeds == [2 * records.index(next(r for r in records if r["prompt"] == prompts[0])), seeds[0] + 1]
        return [Image.new("RGB", (8, 8))] * len(prompts)

    write_folder(tmp_path, records, 2, generate, batch_size=2, prompts=prompt_slice("1:5:2"))
    assert folders_before_each_batch == [[], ["00001"]]  # one prompt a batch: each folder appears with its images
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001", "00003"]  # the metadata's indices
    assert json.loads((tmp_path / "00003/metadata.jsonl").read_text()) == records[3]
    slices = [slice(None), slice(0, 50), slice(50, None), slice(None, None, 4)]
    assert [prompt_slice(t) for t in (None, "0:50", "50:", "::4")] == slices
    with pytest.raises(ValueError, match="--prompts '0-50' is not a slice of the prompts: write start:stop"):
        prompt_slice("0-50")


def test_geneval_warns_about_missing_images_and_uncovered_classes(tmp_path, caplog):
    scenes = ground_truth(per_task=1)[:5]
    write_folder(tmp_path, [s.metadata() for s in scenes], 2, lambda p, s: [render(scenes[0].objects, 32)] * len(p))
    for index in (1, 2, 4):
        for sample in (tmp_path / f"0000{index}/samples").iterdir():
            sample.unlink()
    (tmp_path / "00003/samples/0001.png").unlink()
    with caplog.at_level(logging.WARNING):
        summary = summarize(score_folder(tmp_path, ShapesDetector()))
    assert summary["prompts"] == 2 and summary["images"] == 3
    assert "3 of 5 prompt folders in" in caplog.text and "have no images (00001, 00002, 00004)" in caplog.text
    assert "1 of 5 prompt folders in" in caplog.text and "have fewer than 2 images (00003)" in caplog.text
    assert "ShapesDetector cannot report" not in caplog.text
    coco = {"tag": "single_object", "include": [{"class": "tv remote", "count": 1}], "prompt": "a photo of a tv remote"}
    (tmp_path / "00000/metadata.jsonl").write_text(json.dumps(coco))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        score_folder(tmp_path, ShapesDetector())
    assert "ShapesDetector cannot report 1 of the metadata's" in caplog.text
    assert "classes (tv remote): prompts with them never pass; score COCO prompts with --detector" in caplog.text


def test_an_unreadable_image_is_an_error_naming_it(tmp_path):
    scenes = ground_truth(per_task=1)[:2]
    write_folder(tmp_path, [s.metadata() for s in scenes], 1, lambda p, s: [render(scenes[0].objects, 32)] * len(p))
    png = tmp_path / "00001/samples/0000.png"
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(
        ValueError, match=r"00001/samples/0000.png: unreadable image \(.*\); delete it and rerun"
    ) as error:
        score_folder(tmp_path, ShapesDetector())
    assert error.value.__context__ is None
    (tmp_path / "00001/metadata.jsonl").write_text("{oops")
    with pytest.raises(ValueError, match=r"00001/metadata.jsonl: not valid JSON .*delete the folder and rerun"):
        score_folder(tmp_path, ShapesDetector())


def test_transformers_detector_runs_end_to_end_from_local_paths(tiny_detector_and_clip):
    detector = TransformersDetector(*map(str, tiny_detector_and_clip))
    scene = ground_truth(per_task=1)[5]  # color_attr
    image = render(scene.objects, 32)
    found = detector.detect(image)
    assert set(found) <= {"circle", "square", "triangle"} and sum(map(len, found.values())) == 8  # one per query
    boxes = [d for ds in found.values() for d in ds]
    assert all(0 <= d.score <= 1 and len(d.box) == 4 for d in boxes)
    colors = detector.colors(image, boxes[:3], "circle")
    assert len(colors) == 3 and set(colors) <= set(PALETTE)
    ok, reason = score_image(image, scene.metadata(), detector)  # random weights: any verdict, but a verdict
    assert isinstance(ok, bool) and isinstance(reason, str)


def test_generate_and_geneval_commands(tiny_checkpoint, shapes_dir, tmp_path, capsys, monkeypatch):
    from sana_lightning.cli import main, run

    metadata = str(shapes_dir / "metadata.jsonl")
    generate = ["generate", str(tiny_checkpoint), str(tmp_path / "images"), "--metadata", metadata]
    main([*generate, "--images_per_prompt", "2", "--steps", "2", "--prompts", "0:6"])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:05d}" for i in range(6)]
    main([*generate, "--images_per_prompt", "2", "--steps", "2"])  # resumes: the other 6 prompts
    assert len(list((tmp_path / "images").glob("*/samples/*.png"))) == 2 * 12
    (tmp_path / "bad.jsonl").write_text('{"tag": "colors" "prompt": "x"}\n')
    monkeypatch.setattr(
        "sys.argv", ["sana", "generate", "none.ckpt", str(tmp_path / "x"), "--metadata", str(tmp_path / "bad.jsonl")]
    )
    with pytest.raises(
        SystemExit, match=r"^error: .*bad.jsonl:1: not valid JSON \(Expecting ',' delimiter at column 18\)"
    ):
        run()
    main(["geneval", str(tmp_path / "images")])
    out = capsys.readouterr().out
    assert "Total images: 24" in out and "Overall score (avg. over tasks):" in out
    saved = json.loads((tmp_path / "images/geneval.json").read_text())
    assert len(saved["images"]) == 24 and set(saved["summary"]["tasks"]) == set(TASKS)
    with pytest.raises(FileNotFoundError, match="no GenEval prompt folders"):
        main(["geneval", str(tmp_path / "nothing")])


def test_geneval_callback_logs_per_task_scores(shapes_dir, tmp_path):
    import lightning as L

    from sana_lightning.callbacks import GenEvalCallback
    from sana_lightning.data.datamodule import ShardDataModule
    from sana_lightning.module import SanaFlowModule
    from sana_lightning.text_encoder import TextEncoderConfig

    module = SanaFlowModule(
        preset="tiny", text_encoder=TextEncoderConfig(max_length=8), sampler={"steps": 2}, ema_decay=None
    )
    callback = GenEvalCallback(metadata=str(shapes_dir / "metadata.jsonl"), prompts_per_task=1)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path),
        callbacks=[callback],
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    data = ShardDataModule(
        f"{shapes_dir}/train-*.tar",
        f"{shapes_dir}/val-*.tar",
        batch_size=4,
        batches_per_epoch=2,
        val_batches=1,
        num_workers=0,
    )
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    assert {f"geneval/{t}" for t in TASKS} | {"geneval/overall"} <= set(metrics)
    assert 0 <= metrics["geneval/overall"] <= 1


def test_prompt_generator_writes_valid_seeded_geneval_metadata(tmp_path):
    from sana_lightning.cli import main
    from sana_lightning.eval.prompts import COCO_CLASSES, geneval_prompts

    main(["prompts", str(tmp_path / "coco.jsonl"), "--prompts_per_task", "5", "--seed", "3"])
    records = read_metadata(tmp_path / "coco.jsonl")  # validates every record
    assert [r["tag"] for r in records] == [t for t in TASKS for _ in range(5)]
    assert records == geneval_prompts(COCO_CLASSES, 5, seed=3) and records != geneval_prompts(COCO_CLASSES, 5, seed=4)
    assert all(c["class"] in COCO_CLASSES for r in records for c in r["include"])
    counting = [r for r in records if r["tag"] == "counting"]
    assert all(r["exclude"][0]["count"] == r["include"][0]["count"] + 1 for r in counting)
    main(["prompts", str(tmp_path / "shapes.jsonl"), "--vocabulary", "shapes", "--prompts_per_task", "2"])
    assert {c["class"] for r in read_metadata(tmp_path / "shapes.jsonl") for c in r["include"]} <= {
        "circle",
        "square",
        "triangle",
    }
