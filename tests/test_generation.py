"""Generation in Lightning's predict loop: 2 ranks write exactly the files 1 rank writes, and a killed run, rerun,
makes only the missing images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sana_lightning.cli import main
from sana_lightning.generation import ImageGenerator
from sana_lightning.module import SanaFlowModule

ROOT = Path(__file__).parents[1]


def generate_args(checkpoint, shapes_dir, out: Path, *extra: str) -> list[str]:
    return [
        "generate", str(checkpoint), str(out), "--metadata", f"{shapes_dir}/metadata.jsonl",
        "--images_per_prompt", "1", "--batch_size", "4", "--trainer.accelerator", "cpu", *extra,
    ]  # fmt: skip


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_ranks_write_exactly_the_files_one_rank_writes(tiny_checkpoint, shapes_dir, tmp_path):
    """Each image has its own seed and every forward the same batch size, so the split over ranks changes nothing.
    (One thread a process in both runs, as Lightning's CPU DDP sets: float sums may differ across thread counts.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "one": ["--trainer.devices", "1"],
        "two": ["--trainer.devices", "2", "--trainer.strategy", "ddp"],
    }
    command = [sys.executable, "-m", "sana_lightning.cli"]
    processes = {
        name: subprocess.Popen(
            command + generate_args(tiny_checkpoint, shapes_dir, tmp_path / name, *flags),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, flags in runs.items()
    }  # fmt: skip
    outputs = {name: process.communicate() for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name][1][-3000:]
    assert outputs["two"][0].count("made 6 of the 12 missing images") == 2  # 12 prompts, 6 on each rank
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len([name for name in one if name.endswith(".png")]) == 12
    assert one.keys() == two.keys() and all(one[name] == two[name] for name in one)  # equal bytes, equal pixels


def test_a_killed_run_rerun_makes_only_the_missing_images(tiny_checkpoint, shapes_dir, tmp_path, monkeypatch):
    predict_step = ImageGenerator.predict_step

    def killed_at_the_third_batch(self, batch, batch_idx):
        if batch_idx == 2:
            raise KeyboardInterrupt
        return predict_step(self, batch, batch_idx)

    monkeypatch.setattr(ImageGenerator, "predict_step", killed_at_the_third_batch)
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown on an interrupt
        main(generate_args(tiny_checkpoint, shapes_dir, tmp_path))
    assert len(list(tmp_path.rglob("*.png"))) == 8 and not list(tmp_path.rglob(".*tmp*"))
    monkeypatch.setattr(ImageGenerator, "predict_step", predict_step)
    made, generate = [], SanaFlowModule.generate
    monkeypatch.setattr(
        SanaFlowModule,
        "generate",
        lambda self, prompts, seeds, *a, **k: made.extend(seeds) or generate(self, prompts, seeds, *a, **k),
    )
    main(generate_args(tiny_checkpoint, shapes_dir, tmp_path))
    assert sorted(set(made)) == list(range(8, 12))  # only the 4 missing images (one padded batch of 4)
    assert len(list(tmp_path.rglob("*.png"))) == 12


def test_scale_on_two_ranks_picks_the_winners_one_rank_picks(tiny_checkpoint, shapes_dir, tmp_path):
    """Candidates are made and judged (oracle judge) in the predict loop on 2 ranks; the first process selects."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--prompts", f"{shapes_dir}/metadata.jsonl", "--num_candidates", "4"]
    args += ["--steps", "2", "--batch_size", "4", "--trainer.accelerator", "cpu", "--grid_prompts", "0"]
    runs = {"one": ["--trainer.devices", "1"], "two": ["--trainer.devices", "2", "--trainer.strategy", "ddp"]}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "sana_lightning.cli", "scale", str(tiny_checkpoint), name, *args, *flags],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, flags in runs.items()
    }  # fmt: skip
    outputs = {name: process.communicate() for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name][1][-3000:]
    scores = {name: json.loads((tmp_path / name / "scores.json").read_text()) for name in runs}
    assert [p["winners"] for p in scores["one"]["prompts"]] == [p["winners"] for p in scores["two"]["prompts"]]
    assert [p["verdicts"] for p in scores["one"]["prompts"]] == [p["verdicts"] for p in scores["two"]["prompts"]]
    assert files(tmp_path / "one").keys() - {"scores.json"} == files(tmp_path / "two").keys() - {"scores.json"}
