"""GPU check: `sana-1.6b` at 1024 px in bf16 on one GPU, in one short run (<= 8 minutes on an H100).

    python -m benchmarks.gpu_check [--device cuda] [--steps 3]
    python -m benchmarks.gpu_check --tiny --out /tmp/gpu_check     # CPU plumbing check (tests/test_gpu_check.py)

Measures, each after warm-up (CUDA synchronised before every clock read; generate warms up with a 2-step call):
1. train step (forward + backward + optimizer step, batch 1, bf16 autocast over fp32 master weights, flow loss) with
   AdamW and with CAME-8bit: seconds/step and peak memory;
2. `generate`: images/s for a batch of 4 (20-step Flow-DPM-Solver, CFG 4.5 so 8 transformer rows a step, bf16
   weights), DC-AE decode included;
3. the FSDP2 path on a 1-rank process group (`shard_transformer`, bf16 params / fp32 reduce from `ShardingConfig`,
   nccl on CUDA, gloo on CPU): train-step time and peak with AdamW and with CAME-8bit.

Nothing is downloaded: the transformer has random weights (`build_transformer`), the DC-AE is diffusers
`AutoencoderDC` built from the f32c32 Sana config with random weights (it gives the latent shape, 32 channels at /32,
and does the decoding), and the caption embeddings are random tensors of Gemma-2-2B-IT's shape (300 tokens x 2304).
Peak memory is `torch.cuda.max_memory_allocated` per measurement on CUDA; on CPU only the process's max RSS exists,
which never goes down, so later rows include earlier ones. `--tiny`: preset `tiny` at 64 px with a 2-level DC-AE
(4 latent channels at /2), 16 caption tokens, 1 warm-up + 2 timed train steps, 1 timed generate.
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import resource
import socket
import sys
import time
import traceback
from pathlib import Path

import torch

from sana_lightning.tables import markdown_table

RESULTS = Path(__file__).parent / "results"

# diffusers' AutoencoderDC config of mit-han-lab/dc-ae-f32c32-sana-1.x-diffusers (its config.json).
DC_AE_F32C32 = dict(
    in_channels=3,
    latent_channels=32,
    attention_head_dim=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
    decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    downsample_block_type="Conv",
    upsample_block_type="interpolate",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)
# A 2-level DC-AE for --tiny (as tests/conftest.py `tiny_dc_ae`).
TINY_DC_AE = dict(
    latent_channels=4,
    attention_head_dim=8,
    encoder_block_types="ResBlock",
    decoder_block_types="ResBlock",
    encoder_block_out_channels=(8, 16),
    decoder_block_out_channels=(8, 16),
    encoder_layers_per_block=(1, 1),
    decoder_layers_per_block=(1, 1),
    encoder_qkv_multiscales=((), ()),
    decoder_qkv_multiscales=((), ()),
    scaling_factor=0.41407,
)
GEMMA_TOKENS = 300  # Sana's caption length; the width is the preset's caption_channels (Gemma-2-2B-IT: 2304)
GENERATE_BATCH = 4


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def timed(step, device: torch.device, warmup: int, steps: int, warmup_step=None) -> tuple[float, float]:
    """Seconds per call of `step` after `warmup` calls (of `warmup_step`, by default `step`), and the peak memory
    since the last `reset_peak`."""
    for _ in range(warmup):
        (warmup_step or step)()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps, peak_gb(device)


def build_autoencoder(tiny: bool):
    """The random-weight DC-AE, on the CPU until `generate` needs it (so it is not in the train steps' peaks)."""
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    return AutoencoderDC(**(TINY_DC_AE if tiny else DC_AE_F32C32)).eval().requires_grad_(False)


def build(preset: str, latent_channels: int, device: torch.device):
    """The preset's transformer with random weights (seeded, so every measurement starts from the same ones), taking
    the autoencoder's latent channels."""
    from sana_lightning.presets import build_transformer

    torch.manual_seed(0)
    return build_transformer(preset, device=device, in_channels=latent_channels, out_channels=latent_channels)


def train_batch(transformer, latent_size: int, tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One random training batch of 1: clean latents, noise, a noise level and caption embeddings."""
    from sana_lightning.flow import FlowConfig, add_noise, sample_sigmas

    g = torch.Generator().manual_seed(1)
    config = transformer.config
    x0 = torch.randn(1, config.in_channels, latent_size, latent_size, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    sigmas = sample_sigmas(1, FlowConfig(), g)
    embeds = torch.randn(1, tokens, config.caption_channels, generator=g)
    batch = dict(x0=x0, noise=noise, sigmas=sigmas, noisy=add_noise(x0, noise, sigmas), embeds=embeds)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["mask"] = torch.ones(1, tokens, dtype=torch.long, device=device)
    return batch


def make_train_step(transformer, optimizer, batch: dict, autocast) -> tuple:
    """A closure doing one flow-matching train step (forward, backward, optimizer step), and the losses it saw."""
    from sana_lightning.flow import flow_loss, timesteps_from_sigmas

    losses = []
    timestep = timesteps_from_sigmas(batch["sigmas"]) * transformer.config.timestep_scale

    def step() -> None:
        with autocast():
            prediction = transformer(
                batch["noisy"],
                encoder_hidden_states=batch["embeds"],
                encoder_attention_mask=batch["mask"],
                timestep=timestep,
            ).sample
        loss = flow_loss(prediction, batch["x0"], batch["noise"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    return step, losses


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    from sana_lightning.optim import CAME8bit

    if name == "AdamW":
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    return CAME8bit(params, lr=1e-5)


def measure_train(transformer, name: str, batch: dict, autocast, device, warmup: int, steps: int) -> dict:
    transformer.zero_grad(set_to_none=True)  # none left over from a failed measurement
    reset_peak(device)
    optimizer = make_optimizer(name, transformer.parameters())
    step, losses = make_train_step(transformer, optimizer, batch, autocast)
    seconds, peak = timed(step, device, warmup, steps)
    del optimizer, step
    return dict(seconds=seconds, peak_gb=peak, last_loss=float(losses[-1]))


def measure_generate(transformer, ae, latent_size: int, tokens: int, device, dtype, warmup: int, steps: int) -> dict:
    """Images/s of `generate` for a batch of GENERATE_BATCH: 20-step Flow-DPM-Solver with CFG, then DC-AE decode."""
    from sana_lightning.sampling import SamplerConfig, denoise, initial_noise

    config = SamplerConfig(solver="flow_dpm_solver", steps=20, guidance_scale=4.5)
    g = torch.Generator().manual_seed(2)
    width = transformer.config.caption_channels
    embeds = torch.randn(GENERATE_BATCH, tokens, width, generator=g).to(device, dtype)
    null_embeds = torch.randn(1, tokens, width, generator=g).to(device, dtype)
    mask = torch.ones(GENERATE_BATCH, tokens, dtype=torch.long, device=device)
    null_mask = mask[:1]
    noise = initial_noise(GENERATE_BATCH, transformer.config.in_channels, latent_size, 0, device).to(dtype)
    images = []

    @torch.no_grad()
    def generate(config: SamplerConfig = config) -> None:
        latents = denoise(transformer, noise, embeds, mask, null_embeds, null_mask, config)
        images.append(ae.decode(latents / ae.config.scaling_factor).sample)

    # Warm-up: 2 solver steps (first and second order) run every kernel of the 20-step call.
    short = dataclasses.replace(config, steps=2)
    reset_peak(device)
    seconds, peak = timed(generate, device, warmup, steps, warmup_step=lambda: generate(short))
    return dict(
        seconds=seconds,
        images_per_s=GENERATE_BATCH / seconds,
        peak_gb=peak,
        image_shape=list(images[-1].shape),
        images_finite=bool(torch.isfinite(images[-1]).all()),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_rank_group(device: torch.device):
    """A single-process group (nccl on CUDA, gloo on CPU) and its 1-device mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        rank=0,
        world_size=1,
        init_method=f"tcp://127.0.0.1:{free_port()}",
    )
    try:
        yield init_device_mesh(device.type, (1,))
    finally:
        dist.destroy_process_group()


def write(out: Path, header: list[str], rows: list[dict], command: str, **extra) -> Path:
    """Print the table under its header and save it as markdown and JSON in `out`."""
    table = markdown_table(rows)
    text = "\n".join([f"`{command}`", "", *header, "", table, ""])
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(text)
    path = out / "gpu_check.json"
    path.write_text(json.dumps({"command": command, "header": header, "rows": rows, **extra}, indent=2))
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="preset tiny at 64 px with a tiny DC-AE (CPU check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (3; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--generate-repeats", type=int, default=None, help="timed generate calls (2; --tiny: 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where gpu_check.md/.json go")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda" and not args.tiny:
        parser.error("the sana-1.6b check needs a GPU (--device cuda); on CPU run it with --tiny")
    steps = args.steps or (2 if args.tiny else 3)
    repeats = args.generate_repeats or (1 if args.tiny else 2)
    preset, resolution, tokens = ("tiny", 64, 16) if args.tiny else ("sana-1.6b", 1024, GEMMA_TOKENS)
    dtype = torch.bfloat16

    def autocast():
        return torch.autocast(device.type, dtype=dtype)

    started = time.perf_counter()
    ae = build_autoencoder(args.tiny)
    downsample = 2 ** (len(ae.config.encoder_block_out_channels) - 1)
    latent_size, latent_channels = resolution // downsample, ae.config.latent_channels

    raw: dict[str, dict] = {}

    def attempt(key: str, measure, *args) -> None:
        """Run `measure(*args)`; a failure (an OOM, a missing kernel) is recorded and the other rows still run."""
        try:
            raw[key] = measure(*args)
        except Exception as error:  # one failed row must not lose the GPU run's other rows
            traceback.print_exc()
            raw[key] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]}
            reset_peak(device)
        print(f"{key}: {raw[key]}", file=sys.stderr)

    transformer = build(preset, latent_channels, device)
    params = sum(p.numel() for p in transformer.parameters())
    batch = train_batch(transformer, latent_size, tokens, device)
    for name in ("AdamW", "CAME-8bit"):
        attempt(f"train {name}", measure_train, transformer, name, batch, autocast, device, args.warmup, steps)
    transformer.to(dtype).requires_grad_(False)  # inference runs bf16 weights
    ae.to(device, dtype)
    generate_args = (transformer, ae, latent_size, tokens, device, dtype, args.warmup, repeats)
    attempt("generate", measure_generate, *generate_args)
    del transformer, ae, generate_args
    reset_peak(device)

    def fsdp() -> None:
        from sana_lightning.sharding import ShardingConfig, shard_transformer

        sharding = ShardingConfig(param_dtype="bfloat16", reduce_dtype="float32")
        with one_rank_group(device) as mesh:
            transformer = build(preset, latent_channels, device)
            shard_transformer(transformer, mesh, sharding)
            for name in ("AdamW", "CAME-8bit"):
                train_args = (transformer, name, batch, contextlib.nullcontext, device, args.warmup, steps)
                attempt(f"FSDP2 {name}", measure_train, *train_args)

    attempt("FSDP2 setup", fsdp)
    setup = raw.pop("FSDP2 setup")
    for name in ("AdamW", "CAME-8bit"):
        raw.setdefault(f"FSDP2 {name}", setup)  # the process group or sharding failed: its error
    wall_s = time.perf_counter() - started

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type.upper()} (--tiny)"
    peak_label = (
        "peak GB (torch.cuda.max_memory_allocated)"
        if device.type == "cuda"
        else "peak GB (process max RSS, cumulative)"
    )
    one = "GPU" if device.type == "cuda" else "process"

    def row(measurement: str, key: str, figure: str, unit: str) -> dict:
        m = raw[key]
        if "error" in m:
            return {
                "measurement": measurement,
                "figure": m["error"],
                "unit": unit,
                peak_label: "",
                "loss (last step)": "",
            }
        loss = m.get("last_loss", "")
        return {
            "measurement": measurement,
            "figure": m[figure],
            "unit": unit,
            peak_label: m["peak_gb"],
            "loss (last step)": loss,
        }

    rows = [
        row(f"train step, {name} (bf16 autocast, fp32 weights)", f"train {name}", "seconds", "s/step")
        for name in ("AdamW", "CAME-8bit")
    ]
    rows.append(
        row(
            f"generate, batch {GENERATE_BATCH} (20-step Flow-DPM-Solver, CFG 4.5, bf16, decode incl.)",
            "generate",
            "images_per_s",
            "images/s",
        )
    )
    rows += [
        row(f"train step, FSDP2 on 1 {one} ({name}, bf16 params, fp32 reduce)", f"FSDP2 {name}", "seconds", "s/step")
        for name in ("AdamW", "CAME-8bit")
    ]
    header = [
        f"Device: {device_name}; torch {torch.__version__}; preset `{preset}` ({params / 1e6:.1f}M params, random "
        f"weights) at {resolution} px: latents {latent_channels} x {latent_size} x {latent_size} from a random-weight "
        f"DC-AE ({'2-level tiny' if args.tiny else 'f32c32 Sana config'}).",
        f"Text conditioning: random caption embeddings of {tokens} tokens x {batch['embeds'].shape[-1]} "
        f"({'the preset caption width' if args.tiny else 'Gemma-2-2B-IT width'}); no text encoder.",
        f"Train steps: batch 1, {args.warmup} warm-up + {steps} timed; generate: {args.warmup} warm-up (2 solver "
        f"steps) + {repeats} timed calls. Whole run {wall_s:.0f} s.",
    ]
    path = write(
        args.out,
        header,
        rows,
        command,
        device=device_name,
        torch=torch.__version__,
        preset=preset,
        resolution=resolution,
        params=params,
        wall_s=wall_s,
        raw=raw,
    )
    bad = [
        r["measurement"]
        for r in rows
        if not all(isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0 for k in ("figure", peak_label))
    ]
    if bad:
        raise SystemExit(f"gpu_check: no finite positive figure for {'; '.join(bad)} (see {path})")
    return path


if __name__ == "__main__":
    main()
