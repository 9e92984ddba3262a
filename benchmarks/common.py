"""Shared by the benchmarks: print a table and write it (JSON + markdown) under benchmarks/results/."""

import json
import sys
from pathlib import Path

from sana_lightning.tables import markdown_table

RESULTS = Path(__file__).parent / "results"


def report(name: str, rows: list[dict], **extra) -> Path:
    """Print `rows` as a markdown table and save them with the command that made them."""
    table = markdown_table(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks." + Path(sys.argv[0]).stem, *sys.argv[1:]])
    (RESULTS / f"{name}.md").write_text(f"`{command}`\n\n{table}\n")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"command": command, "rows": rows, **extra}, indent=2))
    return path
