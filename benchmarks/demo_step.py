"""Training-step time of the demo (configs/base.yaml: the `small` Sana, batch 32, 32x32 Shapes) on the CPU: the
config's defaults, each speed-up candidate tried (issue #19) and the report model's step (configs/report.yaml, next
to the same recipe on the 2x2-patch demo model it replaced), each in a fresh process (the allocator setting is
per process), alternated in rounds on the same batches, the best round's median step kept.

    python -m benchmarks.demo_step [--steps 6] [--rounds 2] [--variants NAME ...]

A step is the bare loop of benchmarks/loop_overhead.py (encode the captions, loss, backward, clipping, AdamW, EMA);
each process starts with an empty caption cache, so steps include encoding new captions, as a run's first ones do.
"""

import argparse
import ctypes
import ctypes.util
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from benchmarks.common import bare_step, from_config, report

VARIANTS = {
    "demo defaults": {},
    "+ glibc keeps freed memory": {"allocator": True},
    "+ bf16 autocast": {"bf16": True},
    "+ torch.compile(transformer)": {"compile": True},
    "+ torch.set_num_threads(1)": {"threads": 1},
    "+ channels_last weights": {"channels_last": True},
    "+ no caption cache": {"cache_size": 0},
    "report.yaml (6.9M, 4x4 patches, 16 images)": {"overlay": "report.yaml"},
    "report.yaml on the 1.8M 2x2-patch model": {"overlay": "report.yaml", "transformer": None},
}


def keep_freed_memory(limit: int = 1 << 30) -> None:
    """glibc serves allocations up to `limit` bytes from its heap and keeps freed memory (no fresh zeroed pages per
    large tensor: ~10x fewer page faults per step). Both settings or neither: a trim threshold alone freezes the
    mmap threshold at 128 KiB."""
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    applied = mallopt(-3, limit), mallopt(-1, limit)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    if not all(applied):
        raise RuntimeError(f"mallopt refused the allocator setting: {applied}")


def _time_steps(options: dict, steps: int) -> dict:
    """Seconds per training step (median of `steps` after one warm-up step) with `options`."""
    if options.get("allocator"):
        keep_freed_memory()
    if "threads" in options:
        torch.set_num_threads(options["threads"])
    settings = {"data.init_args.num_workers": 0}
    if "cache_size" in options:
        settings["model.init_args.text_encoder.cache_size"] = options["cache_size"]
    if "transformer" in options:
        settings["model.init_args.transformer"] = options["transformer"]
    overlays = [options["overlay"]] if "overlay" in options else []
    module, data, _ = from_config(*overlays, settings=settings)
    data.prepare_data()
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(steps + 1)]
    if options.get("channels_last"):
        module.transformer.to(memory_format=torch.channels_last)
    if options.get("compile"):
        module.transformer.compile()
    optimizer = module.configure_optimizers()
    if isinstance(optimizer, dict):  # with report.yaml's schedule (not stepped here: it does not change the cost)
        optimizer = optimizer["optimizer"]
    times = []
    for step, batch in enumerate(batches):
        start = time.perf_counter()
        bare_step(module, optimizer, batch, step, bf16=bool(options.get("bf16")))
        times.append(time.perf_counter() - start)
    return {"step s": statistics.median(times[1:]), "first step s": times[0]}


def _in_fresh_process(function, *args) -> dict:
    # Not a multiprocessing.Pool: its daemonic workers could not start the demo's DataLoader worker.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="rows to measure (default: all)")
    args = parser.parse_args()
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name in args.variants:
            result = _in_fresh_process(_time_steps, VARIANTS[name], args.steps)
            print(f"{name}: {result['step s']:.3f} s/step (first step {result['first step s']:.1f} s)", flush=True)
            if name not in best or result["step s"] < best[name]["step s"]:
                best[name] = result
    base = best[args.variants[0]]["step s"]
    rows = [{"path": name, **result, "speed-up": base / result["step s"]} for name, result in best.items()]
    report("demo_step", rows, steps=args.steps, rounds=args.rounds)


if __name__ == "__main__":
    main()
