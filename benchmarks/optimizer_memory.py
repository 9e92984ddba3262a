"""Optimizer memory and speed: AdamW-32bit, bitsandbytes AdamW8bit, CAME and CAME-8bit (SANA 1.5, table 1).

    python -m benchmarks.optimizer_memory [--big-preset sana-600m] [--train-steps 100]

1. On the `--big-preset` Sana (random weights, one small batch) each optimizer runs in its own process: state bytes
   counted from the state tensors, peak process memory (ru_maxrss), and optimizer-step time.
2. On configs/base.yaml's Shapes model (`small`): the training loss after `--train-steps` identical steps, and
   step-time ratios.
3. On paper, for sana-4.8b: bytes per parameter of weights + gradients + optimizer state (fp32 weights and grads),
   from the per-tensor state sizes each optimizer keeps (checked against the measured counts of step 1).
Goals: CAME-8bit state <= 0.15x AdamW-32bit; CAME-8bit step time <= 1.3x AdamW on CPU.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from benchmarks.common import from_config, report
from sana_lightning.memory import OPTIMIZERS, optimizer_state_bytes


def make_optimizer(name: str, params, lr: float = 1e-4) -> torch.optim.Optimizer:
    from sana_lightning.optim import CAME, CAME8bit

    if name == "AdamW-32bit":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "AdamW-8bit (bnb)":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=0.0)
    return (CAME if name == "CAME-32bit" else CAME8bit)(params, lr=lr)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)
    )


def measure_big(name: str, preset: str) -> dict:
    """Runs in a fresh process so that its peak memory is its own."""
    from sana_lightning.presets import build_transformer

    torch.manual_seed(0)
    model = build_transformer(preset)
    optimizer = make_optimizer(name, model.parameters())
    x = torch.randn(1, model.config.in_channels, 8, 8)
    text = torch.randn(1, 4, model.config.caption_channels)
    times = []
    for _ in range(3):
        model(x, encoder_hidden_states=text, timestep=torch.tensor([500.0])).sample.square().mean().backward()
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=False)
    params = list(model.parameters())
    return {
        "state_bytes": state_bytes(optimizer),
        "predicted_state_bytes": sum(optimizer_state_bytes(name, tuple(p.shape)) for p in params),
        "params": sum(p.numel() for p in params),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_seconds": min(times[1:]),
    }


def train_small(name: str, steps: int) -> tuple[float, float, int]:
    """Final loss (mean of the last 10 steps), seconds per optimizer step, and state bytes on configs/base.yaml's
    Shapes model (`small`), in a plain loop: batches of 16, no EMA."""
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
        start = time.perf_counter()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return sum(losses[-10:]) / 10, sorted(step_times)[len(step_times) // 2], state_bytes(optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-preset", default="sana-600m")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--measure", nargs=2, metavar=("OPTIMIZER", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # child process
        print(json.dumps(measure_big(*args.measure)))
        return

    big = {}
    for name in OPTIMIZERS:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.optimizer_memory", "--measure", name, args.big_preset],
            capture_output=True,
            text=True,
            check=True,
        )
        big[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = big["AdamW-32bit"]
    rows = [
        {
            "optimizer": name,
            f"{args.big_preset} state GB": m["state_bytes"] / 1e9,
            "state bytes/param": m["state_bytes"] / m["params"],
            "x AdamW-32bit state": m["state_bytes"] / base["state_bytes"],
            "predicted/measured": m["predicted_state_bytes"] / m["state_bytes"],
            "peak RSS GB": m["peak_rss_bytes"] / 1e9,
            "x AdamW step time": m["step_seconds"] / base["step_seconds"],
        }
        for name, m in big.items()
    ]
    report("optimizer_memory", rows, preset=args.big_preset, raw=big)

    small = {name: train_small(name, args.train_steps) for name in OPTIMIZERS}
    rows = [
        {
            "optimizer": name,
            f"loss after {args.train_steps} steps": loss,
            "x AdamW step time": t / small["AdamW-32bit"][1],
            "state MB": b / 1e6,
        }
        for name, (loss, t, b) in small.items()
    ]
    report("optimizer_shapes", rows)

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
