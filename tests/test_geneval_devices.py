"""GenEval scoring in Lightning's predict loop: 2 ranks write exactly the `geneval.json` 1 rank writes (the one
in-process scoring gives), and Trainer flags this machine cannot run are a one-line error."""

import json
import os
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from sana_lightning.data.shapes import TASKS, SceneSampler, render
from sana_lightning.eval.folder import score_folder, write_folder
from sana_lightning.eval.geneval import summarize
from sana_lightning.eval.shapes_detector import ShapesDetector

ROOT = Path(__file__).parents[1]


def shapes_folder(out: Path) -> Path:
    """12 prompts x 2 images, the second image of every third prompt another prompt's scene (so some verdicts are
    false), one image missing: 23 images, an odd number to split over 2 ranks."""
    sampler = SceneSampler(32, random.Random(0))
    scenes = [sampler.sample(tag) for tag in TASKS for _ in range(2)]
    by_prompt = {scene.prompt: i for i, scene in enumerate(scenes)}

    def generate(prompts, seeds):
        chosen = [by_prompt[p] + (1 if seed % 6 == 1 else 0) for p, seed in zip(prompts, seeds)]
        return [render(scenes[i % len(scenes)].objects, 32) for i in chosen]

    write_folder(out, [s.metadata() for s in scenes], 2, generate, batch_size=5)
    (out / "00007/samples/0001.png").unlink()
    return out


def test_two_ranks_write_the_geneval_json_one_rank_and_in_process_scoring_write(tmp_path):
    runs = {"one": ["--trainer.devices", "1"], "two": ["--trainer.devices", "2", "--trainer.strategy", "ddp"]}
    folders = {name: shapes_folder(tmp_path / name) for name in runs}
    command = [sys.executable, "-m", "sana_lightning.cli", "geneval", "--batch_size", "3", "--trainer.accelerator=cpu"]
    processes = {
        name: subprocess.Popen(
            [*command, str(folders[name]), *flags], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, flags in runs.items()
    }  # fmt: skip
    outputs = {name: process.communicate(timeout=300) for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name][1][-3000:]
    assert "MEMBER: 2/2" in outputs["two"][1] and outputs["two"][0].count("Total images: 23") == 1  # rank 0 reports
    saved = {name: json.loads((folder / "geneval.json").read_text()) for name, folder in folders.items()}
    results = score_folder(folders["one"], ShapesDetector())
    expected = {"summary": summarize(results), "images": [asdict(r) for r in results]}
    assert saved["one"] == expected and saved["two"] == expected
    assert 0 < sum(image["correct"] for image in expected["images"]) < 23
    assert not [p for folder in folders.values() for p in folder.glob(".geneval-*")]  # the parts are gone


def test_a_rank_without_an_image_does_not_hang_the_others(tmp_path):
    """One image, two ranks: the second rank's share is empty (Lightning skips its loop) and still joins the end."""
    folder = shapes_folder(tmp_path / "images")
    for image in folder.glob("*/samples/*.png"):
        if image != folder / "00000/samples/0000.png":
            image.unlink()
    command = [sys.executable, "-m", "sana_lightning.cli", "geneval", str(folder), "--trainer.accelerator=cpu"]
    command += ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((folder / "geneval.json").read_text())["summary"]["images"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_an_accelerator_this_machine_lacks_is_one_line_naming_the_option(tmp_path, monkeypatch):
    from sana_lightning.cli import run

    folder = shapes_folder(tmp_path / "images")
    monkeypatch.setattr("sys.argv", ["sana", "geneval", str(folder), "--trainer.accelerator", "cuda"])
    with pytest.raises(SystemExit) as error:
        run()
    line = str(error.value.code)
    assert "\n" not in line and line.startswith("error: --trainer.accelerator cuda: `CUDAAccelerator` can not run")
    assert line.endswith("(e.g. --trainer.accelerator cpu)")


def test_a_neural_detector_scores_in_the_predict_loop_as_in_process(tiny_detector_and_clip, tmp_path):
    """Its models are submodules (Lightning moves them) and it is told its device; the verdicts do not change."""
    from sana_lightning.eval.scoring import DetectorModule, score_folder_on_devices
    from sana_lightning.eval.transformers_detector import TransformersDetector
    from sana_lightning.trainer_options import TrainerOptions

    detector = TransformersDetector(*map(str, tiny_detector_and_clip))
    module = DetectorModule(detector)
    assert {id(m) for m in module.models} == {id(detector.model), id(detector.clip)}
    folder = shapes_folder(tmp_path / "images")
    expected = score_folder(folder, detector, batch_size=4)
    results = score_folder_on_devices(folder, detector, 4, TrainerOptions(accelerator="cpu", devices=1))
    assert results == expected and detector.device == torch.device("cpu")
