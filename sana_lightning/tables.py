"""Markdown tables of result rows (benchmarks, sweeps, reports)."""


def markdown_table(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) as a markdown table; floats to 4 significant digits."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (row.get(c, "") for c in columns)
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells) + " |")
    return "\n".join(lines)
