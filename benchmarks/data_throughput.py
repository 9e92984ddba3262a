"""Data throughput: raw image shards vs shards precomputed by `precompute`, on the embedded Shapes default.

    python -m benchmarks.data_throughput [--samples 4000] [--batches 60] [--steps 20]

1. Samples/s of `ShardDataModule`'s training loader (2 workers) from raw shards (PNG decode + crop), precomputed
   latents, and precomputed latents + caption features.
2. Training-step time of configs/base.yaml's model (encode + forward + backward + AdamW) per batch of 32, raw vs
   precomputed, with the text encoder's caption cache on (Shapes captions repeat) and off (web captions rarely do).
Pixel space makes the embedded autoencoder free, so the step-time saving here is the text encoder's; with DC-AE at
1024px the autoencoder's encode is saved as well (not measured here: no DC-AE weights offline).
"""

import argparse
import tempfile
import time

import torch

from benchmarks.common import from_config, report
from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.data.precompute import precompute
from sana_lightning.data.shapes import write_shapes_dataset
from sana_lightning.module import SanaFlowModule


def samples_per_second(shards: str, batches: int) -> float:
    data = ShardDataModule(shards, batch_size=32, batches_per_epoch=batches + 5, shuffle_buffer=256, num_workers=2)
    loader = iter(data.train_dataloader())
    for _ in range(5):  # workers started, buffers filled
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return 32 * batches / (time.perf_counter() - start)


def step_seconds(module: SanaFlowModule, batches: list[dict], cache: bool) -> float:
    optimizer = torch.optim.AdamW(module.transformer.parameters(), lr=1e-4)
    times = []
    for index, batch in enumerate(batches):
        if not cache:
            module.text_encoder._cache.clear()
        start = time.perf_counter()
        loss = module.flow_step(batch, module.noise_generator(index))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]  # median after warm-up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    module = from_config()[0]
    with tempfile.TemporaryDirectory() as tmp:
        write_shapes_dataset(f"{tmp}/raw", args.samples, 32, samples_per_shard=1000, eval_prompts_per_task=1)
        start = time.perf_counter()
        precompute(f"{tmp}/raw/train-*.tar", f"{tmp}/latents")
        latents_seconds = time.perf_counter() - start
        start = time.perf_counter()
        precompute(
            f"{tmp}/raw/train-*.tar", f"{tmp}/features", encode_text=True, max_length=module.text_encoder.max_length
        )
        features_seconds = time.perf_counter() - start
        sources = {
            "raw images": f"{tmp}/raw/train-*.tar",
            "precomputed latents": f"{tmp}/latents/train-*.tar",
            "precomputed latents + text": f"{tmp}/features/train-*.tar",
        }
        loader = {name: samples_per_second(shards, args.batches) for name, shards in sources.items()}
        rows = []
        for name, shards in sources.items():
            data = ShardDataModule(shards, batch_size=32, batches_per_epoch=args.steps, num_workers=0)
            batches = list(data.train_dataloader())
            rows.append(
                {
                    "source": name,
                    "loader samples/s (2 workers)": loader[name],
                    "step ms, caption cache on": 1000 * step_seconds(module, batches, cache=True),
                    "step ms, caption cache off": 1000 * step_seconds(module, batches, cache=False),
                }
            )
    for row in rows:
        row["x raw loader"] = row["loader samples/s (2 workers)"] / rows[0]["loader samples/s (2 workers)"]
        row["ms saved/step, cache off"] = rows[0]["step ms, caption cache off"] - row["step ms, caption cache off"]
    report(
        "data_throughput",
        rows,
        samples=args.samples,
        precompute_seconds={"latents": latents_seconds, "latents + text": features_seconds},
    )
    print(f"precompute of {args.samples} samples: latents {latents_seconds:.1f} s, + text {features_seconds:.1f} s")


if __name__ == "__main__":
    main()
