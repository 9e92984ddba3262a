"""The prepared GPU check (`benchmarks/gpu_check.py`) runs end to end on CPU with `--tiny`."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("train step, AdamW", "train step, CAME-8bit", "generate", "FSDP2 on 1 process (AdamW", "(CAME-8bit, bf16")


def test_gpu_check_tiny_writes_its_table(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["device"] == "CPU (--tiny)" and result["preset"] == "tiny" and result["resolution"] == 64
    rows = result["rows"]
    assert len(rows) == 5
    for label, row in zip(ROWS, rows):
        assert label in row["measurement"], (label, row["measurement"])
        figures = [v for k, v in row.items() if k == "figure" or k.startswith("peak GB")]
        assert len(figures) == 2 and all(math.isfinite(v) and v > 0 for v in figures), row
    assert [row["unit"] for row in rows] == ["s/step", "s/step", "images/s", "s/step", "s/step"]
    assert all(math.isfinite(row["loss (last step)"]) for i, row in enumerate(rows) if i != 2)
    assert result["raw"]["generate"]["image_shape"] == [4, 3, 64, 64]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "Device: CPU (--tiny)" in table and "random caption embeddings" in table
    assert all(label in table for label in ROWS) and table.count("\n|") == 7  # header, rule, 5 rows
    assert table.strip() in done.stdout  # also printed
