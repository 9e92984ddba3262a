"""CLI start-up (issue #17): wall time of `python -m sana_lightning.cli [command] --help`, this tree vs a git ref.

    python -m benchmarks.cli_startup [--baseline 5f4612a] [--runs 5]

The baseline is checked out with `git worktree add` into a temporary folder (removed afterwards). Each tree runs
with `PYTHONPATH=<tree>` and the tree as working directory, so it imports its own package (checked before timing).
Per command: one untimed warm-up of each tree (bytecode compiled, files cached), then `--runs` runs of each,
alternating, so that load on a shared machine hits both alike. Reported: median and min seconds, and the ratio of
the medians (this tree / baseline: below 1 is faster). A command that fails is reported with its error.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, checkout, report

COMMANDS = ([], ["grow"], ["fit"])


def environment(tree: Path) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(tree)}


def imported_package(tree: Path) -> Path:
    """Where `sana_lightning` comes from when run in `tree` as the timed commands are: it must be the tree's own."""
    code = "import sana_lightning; print(sana_lightning.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=environment(tree), capture_output=True, text=True, check=True
    )
    path = Path(out.stdout.strip()).resolve()
    if not path.is_relative_to(tree.resolve()):
        raise RuntimeError(f"in {tree}, sana_lightning is imported from {path}, not from the tree")
    return path.parent


def seconds(tree: Path, command: list[str]) -> float:
    """Wall time of one `python -m sana_lightning.cli <command> --help` in `tree`."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "sana_lightning.cli", *command, "--help"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if out.returncode != 0 or "usage" not in out.stdout.lower():
        lines = (out.stderr or out.stdout).strip().splitlines() or [f"exit status {out.returncode}"]
        raise RuntimeError(lines[-1])
    return elapsed


def compare(trees: dict[str, Path], command: list[str], runs: int) -> dict:
    """One row: median and min seconds of each tree, alternating runs after a warm-up of each."""
    name = " ".join(["cli", *command, "--help"])
    times: dict[str, list[float]] = {label: [] for label in trees}
    try:
        for label, tree in trees.items():
            seconds(tree, command)  # warm-up
        for _ in range(runs):
            for label, tree in trees.items():
                times[label].append(seconds(tree, command))
    except RuntimeError as error:
        return {"command": name, "error": str(error)}
    row = {"command": name}
    for label, values in times.items():
        row |= {f"{label} median s": statistics.median(values), f"{label} min s": min(values)}
    this, baseline = (statistics.median(values) for values in times.values())
    return row | {"ratio (this / baseline)": this / baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="5f4612a", help="git ref to compare with")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each tree per command")
    args = parser.parse_args()
    with checkout(args.baseline) as baseline:
        trees = {"this tree": ROOT, f"baseline {args.baseline}": baseline}
        packages = {label: str(imported_package(tree)) for label, tree in trees.items()}
        for label, package in packages.items():
            print(f"{label}: sana_lightning from {package}", flush=True)
        rows = [compare(trees, command, args.runs) for command in COMMANDS]
    report("cli_startup", rows, baseline=args.baseline, runs=args.runs, packages=packages, cpus=os.cpu_count())


if __name__ == "__main__":
    main()
