"""Every notebook runs top to bottom (nbclient) with tiny settings put in its `parameters` cell."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def tiny_parameters(data_root: Path, work_dir: Path) -> dict:
    return {
        "PRESET": '"tiny"',
        "STEPS": "4",
        "SOURCE_STEPS": "4",
        "SOURCE_LAYERS": "4",
        "GROWN_LAYERS": "6",
        "GROW_STEPS": "2",
        "PRUNED_LAYERS": "3",
        "RECOVER_STEPS": "2",
        "BATCH_SIZE": "4",
        "NUM_TRAIN": "64",
        "PROMPTS_PER_TASK": "1",
        "CANDIDATES": "[1, 2]",
        "SAMPLE_STEPS": "2",
        "DATA_ROOT": repr(str(data_root)),
        "LOG_DIR": repr(str(work_dir)),
        "WORK_DIR": repr(str(work_dir)),
    }


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    values = tiny_parameters(tmp_path / "shapes", tmp_path / "work")
    lines = [line.split(" = ")[0] for line in cell.source.splitlines() if " = " in line]
    assert set(lines) <= set(values), f"add {set(lines) - set(values)} to the tiny parameters"
    cell.source = "\n".join(f"{name} = {values[name]}" for name in lines)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images  # the plots were drawn
