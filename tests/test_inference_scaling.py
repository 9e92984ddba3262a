import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from sana_lightning.cli import main
from sana_lightning.data.shapes import SceneSampler, ShapeObject, render
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.images import pil_to_tensor, to_pil
from sana_lightning.inference_scaling import (
    CLIPJudge,
    GenEvalOracleJudge,
    Verdict,
    VLMJudge,
    best_of_n,
    knockout,
    scale,
)
from sana_lightning.module import SanaFlowModule


def ordered_verdicts(n, seed=0):
    """Verdicts with a known total order: a random permutation of strengths, "yes" for the upper half."""
    strengths = list(range(n))
    random.Random(seed).shuffle(strengths)
    return [Verdict(s >= n // 2, (s + 1) / (n + 1), 1 - (s + 1) / (n + 1)) for s in strengths], strengths


@pytest.mark.parametrize("n, k", [(2, 1), (7, 1), (16, 1), (32, 1), (16, 4), (9, 3), (5, 5)])
def test_knockout_returns_the_true_best_with_n_minus_k_comparisons(n, k):
    for seed in range(5):
        verdicts, strengths = ordered_verdicts(n, seed)
        winners, comparisons = knockout(verdicts, k)
        assert comparisons == n - k and len(winners) == k
        if k == 1:
            assert strengths[winners[0]] == n - 1
        assert max(strengths) in [strengths[w] for w in winners]  # the best always survives


def test_tie_rules():
    assert knockout([Verdict(False, 0.9, 0.1), Verdict(True, 0.2, 0.8)])[0] == [1]  # yes beats no
    assert knockout([Verdict(True, 0.6, 0.4), Verdict(True, 0.7, 0.3)])[0] == [1]  # two yes: higher p_yes
    assert knockout([Verdict(False, 0.1, 0.6), Verdict(False, 0.1, 0.7)])[0] == [0]  # two no: lower p_no
    assert knockout([Verdict(True, 0.5, 0.5)] * 4)[0] == [0]  # exact ties: the earlier candidate
    assert best_of_n([0.2, 0.9, 0.9, 0.1], 2) == [1, 2] and best_of_n([0.3, 0.3], 1) == [0]
    with pytest.raises(ValueError, match="cannot select k=3 of 2 candidates"):
        knockout([Verdict(True, 1, 0)] * 2, 3)


def scene_and_renders():
    scene = SceneSampler(32, random.Random(3)).sample("colors")
    good = render(scene.objects, 32)
    bad = render(
        [ShapeObject(o.shape, "white" if o.color != "white" else "black", o.cx, o.cy, o.size) for o in scene.objects],
        32,
    )
    return scene, good, bad


def test_oracle_judge_is_geneval():
    scene, good, bad = scene_and_renders()
    judge = GenEvalOracleJudge(ShapesDetector(), {scene.prompt: scene.metadata()})
    assert judge.judge([bad, good, bad], scene.prompt) == [
        Verdict(False, 0, 1),
        Verdict(True, 1, 0),
        Verdict(False, 0, 1),
    ]
    with pytest.raises(ValueError, match="no metadata for prompt"):
        judge.judge([good], "a photo of a dragon")


def test_clip_and_vlm_judges_run_from_local_paths(tiny_detector_and_clip, tiny_vlm):
    _, good, bad = scene_and_renders()
    clip = CLIPJudge(str(tiny_detector_and_clip[1])).judge([good, bad], "a photo of a red circle")
    assert len(clip) == 2 and all(-1 <= v.p_yes <= 1 for v in clip) and clip[0].p_yes != clip[1].p_yes
    vlm = VLMJudge(str(tiny_vlm)).judge([good, bad], "a photo of a red circle")
    assert len(vlm) == 2 and all(0 < v.p_yes < 1 and 0 < v.p_no < 1 and v.yes == (v.p_yes > v.p_no) for v in vlm)


def test_batched_clip_judging_equals_one_by_one(tiny_detector_and_clip):
    scene, good, bad = scene_and_renders()
    prompts = ["a photo of a red circle", scene.prompt, "a blue-square", "a photo of a red circle", "x"]
    pairs = list(zip(prompts, [good, bad, good, bad, good]))
    judge = CLIPJudge(str(tiny_detector_and_clip[1]), batch_size=3)  # two batches, several prompts in each
    one_by_one = [judge.judge([image], prompt)[0] for prompt, image in pairs]
    together = judge.judge_pairs(pairs)
    assert len(together) == len(pairs) and len({v.p_yes for v in together}) > 2
    for batched, single in zip(together, one_by_one):
        assert batched.yes == single.yes and batched.p_yes == pytest.approx(single.p_yes, abs=1e-5)
        assert batched.p_no == pytest.approx(single.p_no, abs=1e-5)
    assert judge.judge([good, bad], prompts[0]) == judge.judge_pairs([(prompts[0], good), (prompts[0], bad)])


def test_scale_selects_the_correct_candidate_and_resumes_without_regenerating(tmp_path):
    scene, good, bad = scene_and_renders()
    calls = []

    def generate(prompts, seeds):  # candidate 5 of every prompt is the correct image
        calls.extend(seeds)
        return [good if seed % 8 == 5 else bad for seed in seeds]

    judge = GenEvalOracleJudge(ShapesDetector(), {scene.prompt: scene.metadata()})
    records = [scene.metadata(), scene.metadata()]
    result = scale(tmp_path, records, generate, judge, num_candidates=8, batch_size=3)
    assert [p["winners"] for p in result["prompts"]] == [[5], [5]]
    assert (result["images_generated"], result["judge_calls"], result["comparisons"]) == (16, 16, 14)
    assert torch.equal(
        torch.tensor(list(Image.open(tmp_path / "00001/samples/0000.png").getdata())),
        torch.tensor(list(good.getdata())),
    )
    assert sorted(calls) == list(range(16))
    calls.clear()
    (tmp_path / "candidates/00001/samples/0007.png").unlink()  # as if the run had died before its last image
    scale(tmp_path, records, generate, judge, num_candidates=8)
    assert calls == [15]
    assert json.loads((tmp_path / "scores.json").read_text())["prompts"][0]["winners"] == [5]


def test_scale_command_writes_geneval_layout_and_tensorboard(tiny_checkpoint, shapes_dir, tmp_path):
    main(
        [
            "scale",
            str(tiny_checkpoint),
            str(tmp_path / "out"),
            "--prompts",
            str(shapes_dir / "metadata.jsonl"),
            "--num_candidates",
            "4",
            "--log_dir",
            str(tmp_path / "tb"),
            "--grid_prompts",
            "2",
        ]
    )
    assert len(list((tmp_path / "out").glob("[0-9]*/samples/0000.png"))) == 12
    assert len(list((tmp_path / "out/candidates").glob("*/samples/*.png"))) == 48
    assert list((tmp_path / "tb").glob("events*"))
    (tmp_path / "prompts.txt").write_text("a photo of a red circle\n")
    with pytest.raises(ValueError, match="the oracle judge needs GenEval metadata prompts"):
        main(["scale", str(tiny_checkpoint), str(tmp_path / "o2"), "--prompts", str(tmp_path / "prompts.txt")])


def test_scale_config_runs_the_scale_command_with_sampler_overrides(tiny_checkpoint, shapes_dir, tmp_path):
    config = Path(__file__).parents[1] / "configs/scale.yaml"
    out = tmp_path / "out"
    # Positional arguments after --config replace the config's checkpoint and out_dir.
    args = ["scale", "--config", str(config), str(tiny_checkpoint), str(out), "--prompts"]
    args += [str(shapes_dir / "metadata.jsonl"), "--num_candidates", "2", "--log_dir", str(tmp_path / "tb")]
    main(args + ["--solver", "flow_dpm_solver", "--steps", "2", "--guidance_scale", "2.0", "--grid_prompts", "1"])
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["num_candidates"], scores["k"], scores["selection"]) == (2, 1, "tournament")
    module = SanaFlowModule.from_checkpoint(str(tiny_checkpoint))
    sampler = replace(module.sampler, solver="flow_dpm_solver", steps=2, guidance_scale=2.0)
    record = json.loads((shapes_dir / "metadata.jsonl").read_text().splitlines()[0])
    expected = pil_to_tensor(to_pil(module.generate([record["prompt"]], [0], sampler)[0])).int()
    saved = pil_to_tensor(Image.open(out / "candidates/00000/samples/0000.png").convert("RGB")).int()
    assert (saved - expected).abs().max() <= 2  # the candidate was sampled with the overridden sampler
