"""Lightning overhead and linear-attention scaling of `SanaFlowModule` on the CPU.

    python -m benchmarks.loop_overhead [--steps 20] [--rounds 2]

1. Steps/s of configs/base.yaml's module on the same in-memory batches, under its `lightning.Trainer` (TensorBoard
   logging, gradient clipping, EMA) and in a bare PyTorch loop doing the same work; alternated in rounds, best round
   kept. Goal: Trainer overhead <= 5%.
2. Training-step time of that model (`small`) vs image tokens (16x16, 32x32, 64x64 tokens). Goal: 4x tokens <= 4.5x
   time.
"""

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from benchmarks.common import bare_step, from_config, report, tensorboard
from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.data.shapes import write_shapes_dataset
from sana_lightning.module import SanaFlowModule


def trainer_seconds(batches: list[dict], root: str) -> float:
    settings = {"trainer.max_steps": len(batches), "trainer.logger": tensorboard(root, "overhead")}
    module, _, trainer = from_config(settings=settings)  # the config's trainer: clipping, logging every 10 steps
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))  # the same in-memory batches
    return time.perf_counter() - start


def bare_seconds(batches: list[dict]) -> float:
    module = from_config()[0]
    optimizer = module.configure_optimizers()
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        bare_step(module, optimizer, batch, step)
    return time.perf_counter() - start


def step_seconds(module: SanaFlowModule, image_size: int, repeats: int = 3) -> float:
    batch = {
        "image": torch.randn(8, 3, image_size, image_size).clamp(-1, 1),
        "caption": ["a photo of a red circle"] * 8,
    }
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        module.flow_step(batch, module.noise_generator(i)).backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_shapes_dataset(root, num_train=args.steps * 32, num_val=8, eval_prompts_per_task=1)
        data = ShardDataModule(f"{root}/train-*.tar", batch_size=32, batches_per_epoch=args.steps, num_workers=0)
        batches = list(data.train_dataloader())
        bare_seconds(batches[:3])  # warm-up
        lightning_best, bare_best = float("inf"), float("inf")
        for _ in range(args.rounds):
            lightning_best = min(lightning_best, trainer_seconds(batches, root))
            bare_best = min(bare_best, bare_seconds(batches))
    rows = [
        {"loop": "bare PyTorch", "steps/s": args.steps / bare_best, "relative time": 1.0},
        {
            "loop": "Lightning Trainer",
            "steps/s": args.steps / lightning_best,
            "relative time": lightning_best / bare_best,
        },
    ]
    report("loop_overhead", rows)
    print(f"Trainer overhead: {lightning_best / bare_best - 1:+.1%} (goal <= 5%)\n")

    module = from_config()[0]
    sizes = [32, 64, 128]  # patch 2: 16x16, 32x32, 64x64 tokens
    times = {size: step_seconds(module, size) for size in sizes}
    scaling = [
        {
            "tokens": (s // 2) ** 2,
            "step s (batch 8)": times[s],
            "x tokens": (s // sizes[0]) ** 2,
            "x time": times[s] / times[sizes[0]],
        }
        for s in sizes
    ]
    report("token_scaling", scaling)
    print(f"4x tokens -> {times[64] / times[32]:.2f}x time (goal <= 4.5x)")


if __name__ == "__main__":
    main()
