"""SANA 1.5's four claims on the Shapes domain, on one CPU, in one command; writes `report/`.

    python -m benchmarks.paper_report [--retrain] [--out report] [--only "CAME-8bit" ...]

Trains the report model if there is none (`configs/report.yaml`: the model under every claim), scores it with
GenEval-Shapes, trains the CLIP and VLM verifiers (`train-verifier`), runs the growth, CAME-8bit, pruning and
inference-scaling benchmarks on it, and writes `report/README.md` (the paper's figure next to ours for each claim,
with the commands and their wall time), the benchmarks' tables and PNG plots, and one log per step under
`report/logs/`.
"""

import argparse
import glob
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

from benchmarks.common import RESULTS
from sana_lightning.checkpoints import resolve_path
from sana_lightning.tables import markdown_table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODEL = "runs/report/version_*/checkpoints/last.ckpt"
GROWN = "runs/grow/version_*/checkpoints/last.ckpt"
GROWN_STEPS = 300
"""Steps of the 18-block model grown from the report model; the never-pruned 6-block baseline gets as many more."""
VERIFIERS = "checkpoints/verifiers"
STEPS = {
    name: command.split()
    for name, command in {
        "report model": "-m sana_lightning.cli fit --config configs/base.yaml --config configs/report.yaml",
        "GenEval-Shapes": f"-m benchmarks.geneval_shapes --checkpoint {MODEL}",
        "CLIP verifier": f"-m sana_lightning.cli train-verifier clip {VERIFIERS}/clip",
        "VLM verifier": f"-m sana_lightning.cli train-verifier vlm {VERIFIERS}/vlm --vision_tower {VERIFIERS}/clip",
        "growth": f"-m benchmarks.growth_vs_scratch --source {MODEL} --steps 150 --eval-every 15",
        "CAME-8bit": "-m benchmarks.optimizer_memory --train-steps 100",
        "grown model": f"-m sana_lightning.cli fit --config configs/base.yaml --config configs/report.yaml "
        f"--config configs/grow.yaml --model.init_args.pretrained {MODEL} --trainer.max_steps {GROWN_STEPS} "
        f"--model.init_args.lr_scheduler.init_args.total_steps {GROWN_STEPS} "  # report.yaml's cycle, shortened
        f"--data.init_args.batches_per_epoch {GROWN_STEPS} "  # one epoch: it validates at its end
        # Keep all 6 source blocks: dropping grow.yaml's 2 removes a third of this model (the paper drops 2 of 20).
        # Measured 2026-11-29 (300 steps, 96 images): drop 0 gave val/loss_ema 0.058 and GenEval-Shapes 0.31;
        # drop 2 gave 0.099 and 0.24.
        "--model.init_args.growth.drop_last 0",
        "pruning": f"-m benchmarks.pruning --checkpoint {GROWN} --targets 6 12 --recovery-steps 100 "
        f"--baseline {MODEL} --baseline-steps {GROWN_STEPS + 100}",
        "inference scaling": f"-m benchmarks.inference_scaling --checkpoint {MODEL} --prompts-per-task 8 --max-n 32 "
        f"--vlm {VERIFIERS}/vlm --clip {VERIFIERS}/clip",
    }.items()
}


def run_steps(out: Path, retrain: bool, only: list[str] | None) -> dict[str, float]:
    """Run the steps (`only` some of them: the others keep their earlier results); their minutes in timings.json."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    timings = out / "timings.json"
    seconds = json.loads(timings.read_text()) if only and timings.exists() else {}
    for name, args in STEPS.items():
        if only and name not in only:
            continue
        if name == "report model" and glob.glob(MODEL) and not retrain:
            print(f"{name}: using {resolve_path(MODEL)} (--retrain to train it again)")
            continue
        print(f"{name}: python {' '.join(args)}", flush=True)
        start = time.perf_counter()
        with open(out / "logs" / f"{name.replace(' ', '_')}.log", "w") as log:
            done = subprocess.run([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT)
        seconds[name] = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"error: {name} failed (exit {done.returncode}): see {out}/logs/")
        print(f"{name}: {seconds[name] / 60:.1f} min", flush=True)
        timings.write_text(json.dumps(seconds, indent=2))
    return seconds


def _rows(name: str) -> list[dict]:
    return json.loads((RESULTS / f"{name}.json").read_text())["rows"]


def claims() -> list[dict]:
    """One row per claim: the paper's figure and ours, from the benchmarks' results."""
    growth = {r["init"]: r for r in _rows("growth_vs_scratch")}
    memory = {r["optimizer"]: r for r in _rows("optimizer_memory")}
    paper_memory = {r["optimizer"]: r for r in _rows("optimizer_paper_4.8b")}
    pruning = _rows("pruning")
    kept = "kept GenEval tuned"
    distilled = [r for r in pruning if r["criterion"] == "cosine" and r["distill"] == "yes"]
    third = min(distilled, key=lambda r: int(r["depth"].split("->")[1]))  # the shallowest: 18 -> 6
    random_kept = next(r[kept] for r in pruning if r["depth"] == third["depth"] and r["criterion"] == "random")
    baseline = next(r for r in pruning if "never pruned" in r["depth"])
    model = next(r for r in _rows("geneval_shapes") if r["images"] == "model")
    scaling = {r["judge, selection"]: r for r in _rows("inference_scaling")}
    vlm, oracle = scaling["VLM, tournament"], scaling["oracle, tournament"]
    largest = [k for k in vlm if k.startswith("N=")][-1]
    fraction = growth["partial_preservation"]["fraction of scratch steps"]
    weakest = min((k for k in model if k not in ("images", "overall")), key=model.get)
    return [
        {
            "claim": "the base model knows the domain",
            "paper (SANA 1.5)": "SANA 1.5 4.8B: GenEval 0.72 (one sample a prompt)",
            "here (Shapes, CPU)": f"report model: GenEval-Shapes {model['overall']:.2f} (192 prompts x 4 images, "
            f"exact detector; weakest task {weakest} {model[weakest]:.2f})",
        },
        {
            "claim": "growth converges faster than scratch",
            "paper (SANA 1.5)": "4.8B grown from 1.6B: ~2.5x faster (40% of the steps)",
            "here (Shapes, CPU)": f"{fraction:.0%} of the scratch steps to reach scratch's final loss "
            f"({1 / fraction:.1f}x faster, partial preservation)",
        },
        {
            "claim": "CAME-8bit cuts optimizer memory",
            "paper (SANA 1.5)": "~8x less optimizer memory than AdamW-32bit",
            "here (Shapes, CPU)": f"{1 / memory['CAME-8bit']['x AdamW-32bit state']:.1f}x less (measured state, "
            f"sana-600m); sana-4.8b on paper {paper_memory['AdamW-32bit']['optimizer GB']:.1f} -> "
            f"{paper_memory['CAME-8bit']['optimizer GB']:.1f} GB",
        },
        {
            "claim": "pruned depth recovers in ~100 steps",
            "paper (SANA 1.5)": "4.8B (60 blocks) -> 1.6B (20), quality recovered with ~100 fine-tuning steps",
            "here (Shapes, CPU)": f"{third['depth']} blocks, cosine, distilled: GenEval-Shapes kept "
            f"{third[kept]:.2f} after 100 steps (random: {random_kept:.2f}); GenEval {third['GenEval tuned']:.2f} vs "
            f"{baseline['GenEval tuned']:.2f} for the never-pruned model of that depth at equal total steps",
        },
        {
            "claim": "inference scaling lifts GenEval",
            "paper (SANA 1.5)": "GenEval 0.72 -> 0.80 with a VLM judge over many samples",
            "here (Shapes, CPU)": f"GenEval-Shapes {vlm['N=1']:.2f} (N=1) -> {vlm[largest]:.2f} ({largest}), "
            f"VLM judge, knockout tournament (oracle: {oracle[largest]:.2f}, random: "
            f"{scaling['random, tournament'][largest]:.2f}; the VLM scores a passing candidate above a failing one "
            f"of the same prompt {vlm['ranking AUC']:.0%} of the time)",
        },
    ]


def memory_figure(path: Path) -> None:
    rows = _rows("optimizer_paper_4.8b")
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.barh([r["optimizer"] for r in rows], [r["optimizer GB"] for r in rows], color="tab:blue")
    for index, row in enumerate(rows):
        axis.text(row["optimizer GB"], index, f" {row['optimizer GB']:.1f} GB", va="center")
    axis.set(xlabel="optimizer state of sana-4.8b (GB, fp32 weights)", title="CAME-8bit vs AdamW (from measured sizes)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="report")
    parser.add_argument("--retrain", action="store_true", help="train the report model even if a checkpoint exists")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), help="rerun these steps, keep the others' results")
    args = parser.parse_args()
    out = Path(args.out)
    seconds = run_steps(out, args.retrain, args.only)
    for name in ("geneval_shapes", "growth_vs_scratch", "pruning", "inference_scaling"):
        shutil.copy(RESULTS / f"{name}.png", out / f"{name}.png")
    memory_figure(out / "optimizer_memory.png")
    tables = "\n\n".join(
        f"### {name}\n\n{(RESULTS / f'{name}.md').read_text()}"
        for name in (
            "geneval_shapes",
            "growth_vs_scratch",
            "optimizer_memory",
            "optimizer_paper_4.8b",
            "pruning",
            "inference_scaling",
        )
    )
    timing = "\n".join(f"- {name}: {s / 60:.1f} min (`python {' '.join(STEPS[name])}`)" for name, s in seconds.items())
    if "report model" not in seconds:
        timing = f"- report model: not retrained, `{resolve_path(MODEL)}` (`--retrain` trains it)\n{timing}"
    total = sum(seconds.values()) / 60
    table = markdown_table(claims())
    (out / "README.md").write_text(
        f"# SANA 1.5's claims on the Shapes domain\n\n`python -m benchmarks.paper_report` ({total:.0f} min)\n\n"
        f"{table}\n\n![report model samples, framed green where the detector passes them](geneval_shapes.png)\n"
        f"![growth](growth_vs_scratch.png)\n![memory](optimizer_memory.png)\n"
        f"![pruning](pruning.png)\n![inference scaling](inference_scaling.png)\n\n## Steps\n\n{timing}\n\n"
        f"## Tables\n\n{tables}\n"
    )
    print(table)
    print(f"report written to {out}/README.md in {total:.0f} min")


if __name__ == "__main__":
    main()
