"""Trained Shapes verifiers (`train-verifier`): training captions kept apart from the evaluation prompts, hard
negatives false of their scene by GenEval's rules, saved models loaded by the judges from their path, and training
that learns (numbers, fixed seeds)."""

import itertools
import json

import pytest
import torch

from sana_lightning.data.shapes import evaluation_scenes, render
from sana_lightning.eval.geneval import score_image
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.inference_scaling import CLIPJudge, VLMJudge
from sana_lightning.inference_scaling.judges import VERIFIER_RECORD
from sana_lightning.inference_scaling.tournament import Verdict
from sana_lightning.inference_scaling.verifier_data import (
    MISTAKES,
    evaluation_prompts,
    examples,
    holds,
    scene_caption,
)
from sana_lightning.inference_scaling.verifier_evaluation import held_out_report, rivals
from sana_lightning.inference_scaling.verifier_models import build_llava, clip_tokenizer, minilm_tokenizer
from sana_lightning.inference_scaling.verifier_training import (
    domain_words,
    train_verifier,
    vlm_loss,
    vlm_pairs,
)

TINY = dict(width=16, layers=1, heads=2, patch_size=8)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    """GenEval prompts as `shapes` writes them (32 a task, seed 2), in a metadata.jsonl."""
    path = tmp_path_factory.mktemp("prompts") / "metadata.jsonl"
    path.write_text("".join(json.dumps(scene.metadata()) + "\n" for scene in evaluation_scenes(32)))
    return path


def test_no_evaluation_prompt_is_a_training_caption(metadata, tmp_path):
    prompts = evaluation_prompts([str(metadata)])
    captions = lambda stream: {c.text for e in itertools.islice(stream, 3000) for c in (e.positive, e.negative)}  # noqa: E731
    training = captions(examples(0, exclude=prompts, augmented=False))
    assert not training & prompts
    assert len(captions(examples(0, augmented=False)) & prompts) > 30  # without the exclusion they would be there
    with pytest.raises(ValueError, match="python -m sana_lightning.cli shapes"):
        evaluation_prompts([str(tmp_path / "missing.jsonl")])


@pytest.mark.parametrize("held_out", [False, True])
def test_hard_negatives_are_false_of_their_scene_by_the_exact_detector(held_out):
    detector = ShapesDetector()
    for example in itertools.islice(examples(3, held_out=held_out, augmented=False), 96):
        image = render(example.scene.objects, 32)
        positive, negative = example.positive, example.negative
        assert score_image(image, positive.metadata(), detector)[0], positive.text
        assert not score_image(image, negative.metadata(), detector)[0], negative.text
        # exactly the named attribute changed
        shapes = lambda c: sorted(m.shape for m in c.mentions)  # noqa: E731
        colors = lambda c: sorted(str(m.color) for m in c.mentions)  # noqa: E731
        counts = lambda c: [m.count for m in c.mentions]  # noqa: E731
        if example.kind == "color":
            assert shapes(negative) == shapes(positive) and counts(negative) == counts(positive)
            assert [(m.shape, m.color) for m in negative.mentions] != [(m.shape, m.color) for m in positive.mentions]
        elif example.kind == "count":
            assert shapes(negative) == shapes(positive) and colors(negative) == colors(positive)
            assert counts(negative) != counts(positive)
        elif example.kind == "position":
            assert shapes(negative) == shapes(positive) and colors(negative) == colors(positive)
            assert (negative.relation, negative.mentions) != (positive.relation, positive.mentions)
        else:
            assert example.kind == "shape" and shapes(negative) != shapes(positive)
            assert colors(negative) == colors(positive) and counts(negative) == counts(positive)
        if held_out:
            assert positive.text == example.scene.prompt
    scene = example.scene
    assert scene_caption(scene, [True] * len(scene.include)).text == scene.description


@pytest.mark.parametrize("held_out", [False, True])
def test_near_misses_are_one_generator_mistake_away_and_false_of_the_true_caption(held_out):
    detector, mistakes = ShapesDetector(), set()
    for example in itertools.islice(examples(3, held_out=held_out, augmented=False), 120):
        missed = render(example.near_miss.objects, 32)
        assert not score_image(missed, example.positive.metadata(), detector)[0], example.positive.text
        assert score_image(render(example.scene.objects, 32), example.positive.metadata(), detector)[0]
        before, after = example.scene.objects, example.near_miss.objects
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        if len(after) == len(before) + 1:
            assert after[:-1] == before
            mistakes.add("add")
        elif len(after) == len(before) - 1:
            assert all(o in before for o in after)
            mistakes.add("drop")
        elif len(changed) == 1:
            ((a, b),) = changed
            assert (a.cx, a.cy, a.size) == (b.cx, b.cy, b.size) and (a.color == b.color) != (a.shape == b.shape)
            mistakes.add("recolor" if a.color != b.color else "reshape")
        else:
            (a, b), (c, d) = changed  # two objects swapped places
            assert (a.shape, a.color, c.shape, c.color) == (b.shape, b.color, d.shape, d.color)
            assert (b.cx, b.cy, b.size, d.cx, d.cy, d.size) == (c.cx, c.cy, c.size, a.cx, a.cy, a.size)
            mistakes.add("swap")
    assert mistakes == set(MISTAKES)


def test_the_held_out_report_reads_each_examples_three_verdicts():
    """Per example: its true caption, its hard negative, then its near miss under the true caption."""
    held = list(itertools.islice(examples(7, held_out=True, augmented=False), 12))
    yes, no, surer = Verdict(True, 0.9, 0.1), Verdict(False, 0.2, 0.8), Verdict(True, 0.95, 0.05)
    verdicts = [v for i in range(len(held)) for v in (yes, no, surer if i % 3 == 0 else no)]
    rival_pairs = rivals(held)
    report = held_out_report(held, verdicts, rival_pairs, [no] * len(rival_pairs))
    assert report["accuracy"] == report["pair_accuracy"] == report["selection_accuracy"] == 1.0
    assert report["near_miss_selection"] == report["by_kind"]["near_miss"] == round(8 / 12, 4)


def test_clip_tokenizer_spells_every_caption_word_as_one_token():
    tokenizer = clip_tokenizer(domain_words())
    assert all(len(tokenizer(word, add_special_tokens=False).input_ids) == 1 for word in domain_words())


def test_vlm_loss_reads_the_logits_the_judge_generates_from(tiny_vlm):
    """The training forward (left padding, `generate`'s positions) gives the judge's first-token scores."""
    judge = VLMJudge(str(tiny_vlm))
    pairs, truth = vlm_pairs(list(itertools.islice(examples(5), 4)))
    assert truth.count(False) > truth.count(True)  # hard negatives, and easy ones
    log_probs = judge.first_token_scores(pairs).log_softmax(-1)
    answers = [judge.answer_ids["yes" if true else "no"] for true in truth]
    expected = -torch.stack([log_probs[i, ids].logsumexp(-1) for i, ids in enumerate(answers)]).mean()
    torch.testing.assert_close(vlm_loss(judge, pairs, truth)["answer"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tower", ["convnext", "vit"])
@pytest.mark.parametrize("kind", ["clip", "vlm"])
def test_saved_verifiers_load_in_their_judges_from_the_path(kind, tower, metadata, tmp_path):
    out = tmp_path / kind
    summary = train_verifier(kind, str(out), [str(metadata)], steps=2, batch_size=4, held_out=12, tower=tower, **TINY)
    assert json.loads((out / VERIFIER_RECORD).read_text()) == summary
    expected = {
        ("clip", "convnext"): "VisionTextDualEncoderModel",
        ("clip", "vit"): "CLIPModel",
        ("vlm", "convnext"): "FastVlmForConditionalGeneration",
        ("vlm", "vit"): "LlavaForConditionalGeneration",
    }
    assert json.loads((out / "config.json").read_text())["architectures"] == [expected[kind, tower]]
    assert summary["evaluation_prompts_excluded"] == len(evaluation_prompts([str(metadata)]))
    judge = CLIPJudge(str(out)) if kind == "clip" else VLMJudge(str(out))
    example = next(examples(9, held_out=True))
    verdicts = judge.judge([example.image, example.image], example.positive.text)
    # The same image twice in one batch: the same answer; its probabilities may differ in the last bits where the
    # CPU's matmul kernels treat batch rows differently (the CI machine's did, by ~1e-6 relative).
    first, second = verdicts
    assert first.yes == second.yes
    assert (second.p_yes, second.p_no) == pytest.approx((first.p_yes, first.p_no), rel=1e-4, abs=1e-7)
    if kind == "clip":
        assert judge.threshold == summary["threshold"]


@pytest.mark.parametrize("tower", ["convnext", "vit"])
def test_clip_training_beats_chance_on_held_out_pairs(tower, metadata, tmp_path):
    out = str(tmp_path / "clip")
    summary = train_verifier("clip", out, [str(metadata)], steps=60, held_out=120, tower=tower, **TINY)
    assert summary["held_out"]["pair_accuracy"] > 0.6


def test_vlm_fine_tuning_teaches_the_judge_to_read_the_image(tmp_path):
    """Each caption is asked of an image it is true of and one it is false of: only reading the image fits both.
    After 80 steps on the judge's own inputs (a tiny Llava initialised as `train-verifier` does) the saved model,
    loaded by `VLMJudge`, answers all of them right."""
    start = tmp_path / "start"
    model, processor = build_llava(minilm_tokenizer(), features="full", init_std=16**-0.5)
    model.save_pretrained(start)
    processor.save_pretrained(start)
    judge = VLMJudge(str(start))
    scenes = [e for e in itertools.islice(examples(4, held_out=True, augmented=False), 60) if e.scene.tag == "colors"]
    true, other = scenes[:4], scenes[4:8]  # "a photo of a <colour> <shape>"
    pairs = [(e.positive.text, e.image) for e in true] + [(e.positive.text, o.image) for e, o in zip(true, other)]
    truth = [True] * 4 + [holds(e.positive, o.scene) for e, o in zip(true, other)]
    assert truth == [True] * 4 + [False] * 4
    optimizer = torch.optim.AdamW(judge.model.parameters(), lr=1e-2)
    judge.model.train()
    for _ in range(80):
        loss = vlm_loss(judge, pairs, truth, caption_weight=0)["answer"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    judge.model.eval().save_pretrained(tmp_path / "trained")
    judge.processor.save_pretrained(tmp_path / "trained")
    assert [v.yes for v in VLMJudge(str(tmp_path / "trained")).judge_pairs(pairs)] == truth


@pytest.mark.parametrize("tower", ["convnext", "vit"])
def test_a_vlm_on_a_trained_clip_sees_through_its_frozen_vision_tower(tower, metadata, tmp_path):
    """LLaVA's recipe: `--vision_tower CLIP_DIR` makes the trained CLIP's vision tower the VLM's (a ConvNeXt's makes
    a FastVLM, a ViT's a Llava; the CLIP's sizes and image size win over the ones given) and training leaves it as
    it was; a directory that holds no CLIP is named."""
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    clip_dir = tmp_path / "clip"
    train_verifier("clip", str(clip_dir), [str(metadata)], steps=2, batch_size=4, held_out=6, tower=tower, **TINY)
    summary = train_verifier(
        "vlm",
        str(tmp_path / "vlm"),
        [str(metadata)],
        steps=3,
        batch_size=4,
        held_out=6,
        lr=0.1,
        vision_tower=str(clip_dir),
        width=32,
        patch_size=4,
        image_size=48,
        tower="vit" if tower == "convnext" else "convnext",  # the CLIP's tower wins
    )
    assert summary["vision_tower"] == str(clip_dir) and summary["tower"] == tower
    clip = AutoModel.from_pretrained(clip_dir).vision_model.state_dict()
    vlm = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")
    assert (
        type(vlm).__name__
        == {"convnext": "FastVlmForConditionalGeneration", "vit": "LlavaForConditionalGeneration"}[tower]
    )
    vision = vlm.model.vision_tower.state_dict()
    assert vision.keys() == clip.keys() and all(torch.equal(vision[k], clip[k]) for k in clip)
    assert vlm.config.text_config.hidden_size == TINY["width"]  # the CLIP's width, not the 32 given
    crop = lambda path: AutoProcessor.from_pretrained(path).image_processor.crop_size  # noqa: E731
    assert crop(tmp_path / "vlm") == crop(clip_dir) == {"height": 32, "width": 32}  # the CLIP's, not the 48 given
    with pytest.raises(ValueError, match="train-verifier clip"):
        train_verifier("vlm", str(tmp_path / "x"), [str(metadata)], steps=1, vision_tower=str(tmp_path))
