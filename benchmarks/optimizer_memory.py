"""Optimizer memory and speed: AdamW-32bit, bitsandbytes AdamW8bit, CAME and CAME-8bit (SANA 1.5, table 1), this
tree's multi-tensor CAME next to the per-tensor CAME of a baseline commit.

    python -m benchmarks.optimizer_memory [--big-preset sana-600m] [--train-steps 100] [--baseline 952dfb9]

Every measurement runs in its own process (so that its peak memory is its own), importing `sana_lightning` from this
tree or, for the `(baseline)` rows, from `--baseline` checked out in a temporary git worktree.
1. On the `--big-preset` Sana (random weights, one small batch; on CUDA when there is a GPU, else the CPU): state
   bytes counted from the state tensors, peak process memory (ru_maxrss), and optimizer-step time (best of 2 steps
   after the first).
2. On configs/base.yaml's Shapes model (`small`): the training loss after `--train-steps` identical steps, and the
   median optimizer-step time.
3. On paper, for sana-4.8b: bytes per parameter of weights + gradients + optimizer state (fp32 weights and grads),
   from the per-tensor state sizes each optimizer keeps (checked against the measured counts of step 1).
Step times are ratios to AdamW-32bit (torch's default AdamW, as the configs use it) measured in the same run.
Goals: CAME-8bit state <= 0.15x AdamW-32bit; CAME-8bit step <= 1.3x AdamW and CAME <= 1.1x.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from benchmarks.common import ROOT, checkout, from_config, report

TIMED = ("AdamW-32bit", "AdamW-32bit fused", "AdamW-8bit (bnb)", "CAME-32bit", "CAME-8bit")
BASELINE = ("CAME-32bit", "CAME-8bit")


def make_optimizer(name: str, params, lr: float = 1e-4) -> torch.optim.Optimizer:
    from sana_lightning.optim import CAME, CAME8bit

    if name.startswith("AdamW-32bit"):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=name.endswith("fused") or None)
    if name == "AdamW-8bit (bnb)":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=0.0)
    return (CAME if name == "CAME-32bit" else CAME8bit)(params, lr=lr)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)
    )


def timed_step(optimizer: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    optimizer.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_big(name: str, preset: str) -> dict:
    from sana_lightning.memory import optimizer_state_bytes
    from sana_lightning.presets import build_transformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build_transformer(preset).to(device)
    optimizer = make_optimizer(name, model.parameters())
    x = torch.randn(1, model.config.in_channels, 8, 8, device=device)
    text = torch.randn(1, 4, model.config.caption_channels, device=device)
    times = []
    for _ in range(3):
        model(
            x, encoder_hidden_states=text, timestep=torch.tensor([500.0], device=device)
        ).sample.square().mean().backward()
        times.append(timed_step(optimizer))
        optimizer.zero_grad(set_to_none=False)
    params = list(model.parameters())
    known = name.replace(" fused", "")
    return {
        "device": device,
        "state_bytes": state_bytes(optimizer),
        "predicted_state_bytes": sum(optimizer_state_bytes(known, tuple(p.shape)) for p in params),
        "params": sum(p.numel() for p in params),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_seconds": min(times[1:]),
    }


def train_small(name: str, steps: int) -> dict:
    """Final loss (mean of the last 10 steps), median seconds per optimizer step, and state bytes on
    configs/base.yaml's Shapes model (`small`), in a plain loop: batches of 16, no EMA."""
    settings = {
        "model.init_args.ema_decay": None,
        "data.init_args.batch_size": 16,
        "data.init_args.batches_per_epoch": steps,
        "data.init_args.num_workers": 0,
    }
    module, data, _ = from_config(settings=settings)
    data.prepare_data()
    optimizer = make_optimizer(name, module.transformer.parameters(), lr=3e-4)
    losses, step_times = [], []
    for step, batch in enumerate(data.train_dataloader()):
        loss = module.flow_step(batch, module.noise_generator(0, 0, step))
        optimizer.zero_grad()
        loss.backward()
        step_times.append(timed_step(optimizer))
        losses.append(loss.item())
    return {
        "loss": sum(losses[-10:]) / 10,
        "step_seconds": sorted(step_times)[len(step_times) // 2],
        "state_bytes": state_bytes(optimizer),
    }


def run(tree, *child_args: str) -> dict:
    """A measurement in a fresh process importing `sana_lightning` from `tree` (and the benchmarks from here)."""
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); import sana_lightning; sys.path.insert(0, {str(ROOT)!r}); "
        "from benchmarks.optimizer_memory import main; main()"
    )
    out = subprocess.run([sys.executable, "-c", code, *child_args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(child_args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(baseline_tree, *child_args: str) -> dict[str, dict]:
    """`child_args` + optimizer name, for every optimizer of this tree and the CAMEs of the baseline."""
    rows = {name: run(ROOT, *child_args, name) for name in TIMED}
    rows |= {f"{name} (baseline)": run(baseline_tree, *child_args, name) for name in BASELINE}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-preset", default="sana-600m")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--baseline", default="952dfb9", help="git ref of the per-tensor CAME to compare with")
    parser.add_argument("--measure", nargs=2, metavar=("PRESET", "OPTIMIZER"), help=argparse.SUPPRESS)
    parser.add_argument("--train", nargs=2, metavar=("STEPS", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure or args.train:  # child process
        result = (
            measure_big(args.measure[1], args.measure[0])
            if args.measure
            else train_small(args.train[1], int(args.train[0]))
        )
        print(json.dumps(result))
        return

    with checkout(args.baseline) as baseline_tree:
        big = measured(baseline_tree, "--measure", args.big_preset)
        small = measured(baseline_tree, "--train", str(args.train_steps))
    base = big["AdamW-32bit"]
    rows = [
        {
            "optimizer": name,
            f"{args.big_preset} state GB": m["state_bytes"] / 1e9,
            "state bytes/param": m["state_bytes"] / m["params"],
            "x AdamW-32bit state": m["state_bytes"] / base["state_bytes"],
            "predicted/measured": m["predicted_state_bytes"] / m["state_bytes"],
            "peak RSS GB": m["peak_rss_bytes"] / 1e9,
            "step s": m["step_seconds"],
            "x AdamW step time": m["step_seconds"] / base["step_seconds"],
        }
        for name, m in big.items()
    ]
    report("optimizer_memory", rows, preset=args.big_preset, device=base["device"], baseline=args.baseline, raw=big)

    rows = [
        {
            "optimizer": name,
            f"loss after {args.train_steps} steps": m["loss"],
            "step ms": 1e3 * m["step_seconds"],
            "x AdamW step time": m["step_seconds"] / small["AdamW-32bit"]["step_seconds"],
            "state MB": m["state_bytes"] / 1e6,
        }
        for name, m in small.items()
    ]
    report("optimizer_shapes", rows, baseline=args.baseline)

    from sana_lightning.memory import OPTIMIZERS, optimizer_state_bytes
    from sana_lightning.presets import build_transformer

    shapes = [tuple(p.shape) for p in build_transformer("sana-4.8b", device="meta").parameters()]
    n = sum(torch.Size(s).numel() for s in shapes)
    paper = []
    for name in OPTIMIZERS:
        optimizer_bytes = sum(optimizer_state_bytes(name, s) for s in shapes)
        total = 4 * n + 4 * n + optimizer_bytes
        paper.append(
            {
                "optimizer": name,
                "optimizer GB": optimizer_bytes / 1e9,
                "optimizer bytes/param": optimizer_bytes / n,
                "weights+grads+optimizer GB": total / 1e9,
            }
        )
    adamw_total = paper[0]["weights+grads+optimizer GB"]
    for row in paper:
        row["x AdamW-32bit optimizer"] = row["optimizer GB"] / paper[0]["optimizer GB"]
        row["x AdamW-32bit total"] = row["weights+grads+optimizer GB"] / adamw_total
    report("optimizer_paper_4.8b", paper, params=n)


if __name__ == "__main__":
    main()
