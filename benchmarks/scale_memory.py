"""Host memory per rank of building a large Sana over 2 CPU ranks (gloo): today's eager path vs `build_sharded`.

    python -m benchmarks.scale_memory [--preset sana-600m] [--source-layers 12] [--target-layers 28] [--ranks 2]
    python -m benchmarks.scale_memory --preset small --source-layers 4 --target-layers 8   # smoke run, seconds

A source of `--source-layers` blocks at the preset's widths (random weights) is saved as a diffusers directory
(safetensors); each build then runs in fresh processes, one per rank, so that its peak (ru_maxrss) is its own:
1. today: each rank loads the source whole, grows it to `--target-layers` blocks (`resolve_transformer`, partial
   preservation) and shards it over the ranks (`shard_transformer`);
2. new: `factory.build_sharded` (built on meta, `fully_shard`, each rank fills only its shard from source slices).
   Peak RSS per rank, raw and above the process's RSS after imports (and the process group); the model's bytes, the
   ideal (half of them plus one block) and `memory.host_memory`'s prediction; both give each rank the same weights.
   Goal: new <= 0.6x today (sana-600m widths, 28 blocks: 592M parameters).
3. The recovery teacher (the source directory as the unpruned checkpoint) at `--ranks`: whole on every rank vs
   sharded as `PruneRecoveryModule.configure_model` shards it (loaded eagerly, or with `sharding.meta_init`):
   parameter bytes each rank holds and its RSS once built. Goal: sharded <= 0.55x unsharded.
"""

import argparse
import ctypes
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from benchmarks.common import report
from sana_lightning.factory import TransformerSource, build_sharded, resolve_transformer
from sana_lightning.growth import GrowthConfig
from sana_lightning.memory import host_memory, parameter_count
from sana_lightning.presets import build_transformer
from sana_lightning.sharding import ShardingConfig, shard_transformer

TEACHER_SHARDING = replace(ShardingConfig(), activation_checkpointing=False, reshard_after_forward=True)
BUILDS = {
    "today": "today: load + grow whole, then shard_transformer",
    "new": "new: build_sharded (meta, fully_shard, fill shards)",
    "teacher": "teacher, unsharded (every rank whole)",
    "teacher-sharded": "teacher, sharded (load whole, shard_transformer)",
    "teacher-meta": "teacher, sharded (meta_init: build_sharded)",
}


def rss() -> int:
    """This process's resident bytes now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(name: str, source: str, target_layers: int, mesh) -> torch.nn.Module:
    grown = TransformerSource(pretrained=source, growth=GrowthConfig(target_layers))
    if name == "new":
        return build_sharded(grown, {}, mesh, ShardingConfig(), seed=0)
    if name == "teacher-meta":
        return build_sharded(TransformerSource(pretrained=source), {}, mesh, TEACHER_SHARDING)
    model, _ = resolve_transformer(grown if name == "today" else TransformerSource(pretrained=source), {}, seed=0)
    if name == "today":
        shard_transformer(model, mesh, ShardingConfig())
    elif name == "teacher-sharded":
        shard_transformer(model.eval().requires_grad_(False), mesh, TEACHER_SHARDING)
    return model


def measure(name: str, source: str, target_layers: int) -> dict:
    """One rank of one build (a fresh process: its peak RSS is this build's)."""
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    baseline = rss()
    start = time.perf_counter()
    model = build(name, source, target_layers, mesh)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: the RSS the built model keeps
    dist.barrier()
    result = {
        "baseline_rss": baseline,
        "peak_rss": peak,
        "rss_built": rss(),
        "held_bytes": sum(t.numel() * t.element_size() for t in local),
        "checksum": sum(t.double().sum().item() for t in local),
        "seconds": seconds,
    }
    dist.destroy_process_group()
    return result


def launch(name: str, source: str, target_layers: int, ranks: int) -> list[dict]:
    """`measure` on `ranks` fresh processes; their results, by rank."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(ranks)}
    command = [sys.executable, "-m", "benchmarks.scale_memory", "--measure", name, source, str(target_layers)]
    procs = [
        subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, text=True)
        for r in range(ranks)
    ]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{name}: ranks exited with {[p.returncode for p in procs]}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def row(name: str, ranks: list[dict], params: int) -> dict:
    above = [r["peak_rss"] - r["baseline_rss"] for r in ranks]
    return {
        "build": BUILDS[name],
        "params M": params / 1e6,
        "peak RSS GB (max rank)": max(r["peak_rss"] for r in ranks) / 1e9,
        "after imports GB": max(r["baseline_rss"] for r in ranks) / 1e9,
        "peak above imports GB, per rank": " / ".join(f"{a / 1e9:.3f}" for a in above),
        "peak above imports GB (max rank)": max(above) / 1e9,
        "params held GB (max rank)": max(r["held_bytes"] for r in ranks) / 1e9,
        "RSS once built above imports GB": max(r["rss_built"] - r["baseline_rss"] for r in ranks) / 1e9,
        "build s": max(r["seconds"] for r in ranks),
    }


def write_source(folder: str, preset: str, layers: int) -> None:
    torch.manual_seed(0)
    build_transformer(preset, num_layers=layers).save_pretrained(folder)  # safetensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sana-600m", help="widths of the source and the grown model")
    parser.add_argument("--source-layers", type=int, default=12, help="depth of the saved growth source (teacher)")
    parser.add_argument("--target-layers", type=int, default=28, help="depth it grows to")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--measure", nargs=3, metavar=("BUILD", "SOURCE", "TARGET_LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # one rank of one build
        print(json.dumps(measure(args.measure[0], args.measure[1], int(args.measure[2]))))
        return

    start = time.perf_counter()
    n = parameter_count(args.preset, num_layers=args.target_layers)
    source_n = parameter_count(args.preset, num_layers=args.source_layers)
    block = (parameter_count(args.preset, num_layers=2) - parameter_count(args.preset, num_layers=1)) * 4
    folder = tempfile.mkdtemp(prefix="scale_memory_")
    try:
        write_source(folder, args.preset, args.source_layers)
        runs = {name: launch(name, folder, args.target_layers, args.ranks) for name in BUILDS}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [row(name, ranks, source_n if name.startswith("teacher") else n) for name, ranks in runs.items()]
    today, new = rows[0]["peak above imports GB (max rank)"], rows[1]["peak above imports GB (max rank)"]
    eager, meta = host_memory(args.preset, args.ranks, args.source_layers, num_layers=args.target_layers)
    on_paper = {
        "model bytes (fp32, whole)": 4 * n,
        "ideal: half the model + one block": 4 * n / args.ranks + block,
        "memory.host_memory, eager": eager,
        "memory.host_memory, meta_init": meta,
    }
    rows += [
        {"build": k, "params M": n / 1e6, "peak above imports GB (max rank)": v / 1e9} for k, v in on_paper.items()
    ]
    for r in rows[:2] + rows[-4:]:
        r["x today"] = r["peak above imports GB (max rank)"] / today
    for r in rows[2:5]:
        r["x unsharded (held params)"] = r["params held GB (max rank)"] / rows[2]["params held GB (max rank)"]
    same = [a["checksum"] == b["checksum"] for a, b in zip(runs["today"], runs["new"])]
    summary = {
        "new_over_today": new / today,
        "teacher_sharded_over_unsharded": rows[3]["x unsharded (held params)"],
        "same_weights_per_rank": same,
        "wall_s": time.perf_counter() - start,
    }
    path = report("scale_memory", rows, **vars(args), summary=summary, raw=runs)
    lines = [
        f"new / today, peak RSS above imports: {summary['new_over_today']:.3f} (goal <= 0.6)",
        f"teacher sharded / unsharded, parameter bytes per rank: {rows[3]['x unsharded (held params)']:.3f} "
        "(goal <= 0.55)",
        f"each rank's shard equal in both paths: {all(same)}; wall time {summary['wall_s']:.0f} s",
    ]
    print("\n".join(lines))
    md = path.with_suffix(".md")
    md.write_text(md.read_text() + "\n" + "\n".join(f"- {line}" for line in lines) + "\n")


if __name__ == "__main__":
    main()
