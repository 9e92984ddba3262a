"""Training memory on paper: bytes per GPU of a sharded (FSDP) Sana, with activations measured on the meta device, and
host bytes per rank of building it (eager vs `sharding.meta_init`)."""

import copy
import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import SanaTransformer2DModel
from torch.autograd.graph import saved_tensors_hooks

from sana_lightning.optim.blockwise import block_size
from sana_lightning.optim.came import QUANT_BLOCKSIZE
from sana_lightning.optim.layout import matrix_shape
from sana_lightning.presets import build_transformer
from sana_lightning.sharding import DTYPES

OPTIMIZERS = ("AdamW-32bit", "AdamW-8bit (bnb)", "CAME-32bit", "CAME-8bit")
GROWN_FROM = {"sana-4.8b": 20}
"""Depth of the growth source of a preset in the SANA 1.5 recipe (4.8B: sana-1.6b's 20 blocks grown to 60)."""


@functools.lru_cache(maxsize=16)
def parameter_count(preset: str, **overrides) -> int:
    """Parameters of `preset` (with `overrides`, hashable values), counted on the meta device."""
    return sum(p.numel() for p in build_transformer(preset, device="meta", **overrides).parameters())


def host_memory(preset: str, ranks: int, source_layers: int = 0, **overrides) -> tuple[float, float]:
    """Host bytes per rank of building `preset` (fp32) over `ranks` ranks before training, on paper: eager (each rank
    loads the growth source of `source_layers` blocks whole, grows it into the full model, then shards it) and
    `sharding.meta_init` (each rank holds its 1/`ranks` shard, one block drawn whole, as a 1-block model like
    `blocks.seeded_model` draws it, and the pages of its slices of the source's safetensors, mapped while read).
    `source_layers` 0: a preset drawn from scratch, nothing read."""
    n = parameter_count(preset, **overrides)
    drawn = parameter_count(preset, **{**overrides, "num_layers": 1})
    source = parameter_count(preset, **{**overrides, "num_layers": source_layers}) if source_layers else 0
    return 4.0 * (n + source), 4.0 * (n / ranks + drawn + source / ranks)


def optimizer_state_bytes(name: str, shape: tuple[int, ...], min_8bit_size: int = 16384) -> int:
    """Bytes of optimizer state each optimizer keeps for one tensor of `shape` (mirrors their storage rules)."""
    n = math.prod(shape)
    if name == "AdamW-32bit":
        return 8 * n
    if name == "AdamW-8bit (bnb)":  # fp32 under 4096 elements; else 2 uint8 states, fp32 absmax per 256, 2 maps
        return 8 * n if n < 4096 else 2 * n + 8 * -(-n // 256) + 2 * 256 * 4
    dims = matrix_shape(torch.Size(shape))
    factored = len(dims) >= 2
    second = 8 * (n // dims[-1] + n // dims[-2]) if factored else 4 * n  # fp32 row + col, of g^2 and residual
    if name == "CAME-8bit" and factored and n >= min_8bit_size:  # uint8 codes, fp32 absmax per row block
        return n + 4 * (n // dims[-1]) * -(-dims[-1] // block_size(dims[-1], QUANT_BLOCKSIZE)) + second
    return 4 * n + second


def block_activation_bytes(
    model: SanaTransformer2DModel, batch: int, tokens: int, caption_tokens: int, dtype: str
) -> int:
    """Bytes autograd saves for the backward pass of one of `model`'s blocks (run on the meta device)."""
    block = copy.deepcopy(model.transformer_blocks[0]).to(device="meta", dtype=DTYPES[dtype])
    width = model.config.num_attention_heads * model.config.attention_head_dim
    params = {id(p) for p in block.parameters()}
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in params and id(tensor._base) not in params:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    side = int(math.isqrt(tokens))
    x = torch.empty(batch, tokens, width, device="meta", dtype=DTYPES[dtype], requires_grad=True)
    caption = torch.empty(batch, caption_tokens, width, device="meta", dtype=DTYPES[dtype])
    timestep = torch.empty(batch, 6 * width, device="meta", dtype=DTYPES[dtype])
    with saved_tensors_hooks(pack, lambda tensor: tensor):
        block(x, None, caption, None, timestep, side, side)
    return sum(saved)


@dataclass
class MemoryPlan:
    """Bytes per GPU of fully sharded training (weights, grads and optimizer state split over `gpus`)."""

    gpus: int
    weights: float
    grads: float
    optimizer: float
    gathered_blocks: float
    activations: float
    activations_checkpointed: float
    frozen: float
    host_eager: float = 0.0
    """Host bytes per rank of building the model whole (and its growth source) before sharding (`host_memory`)."""
    host_meta: float = 0.0
    """Host bytes per rank of building it with `sharding.meta_init`: the shard, one block, the source's slices."""

    def total(self, checkpointed: bool) -> float:
        activations = self.activations_checkpointed if checkpointed else self.activations
        return self.weights + self.grads + self.optimizer + self.gathered_blocks + activations + self.frozen


def memory_plan(
    preset: str,
    gpus: int,
    batch_per_gpu: int = 4,
    image_size: int = 1024,
    downsample: int = 32,
    caption_tokens: int = 300,
    optimizer: str = "CAME-8bit",
    param_dtype: str = "bfloat16",
    frozen_params: float = 0.0,
    source_layers: int = 0,
) -> MemoryPlan:
    """Per-GPU memory of FSDP2 training: fp32 master weights and grads sharded, optimizer state sharded, two blocks
    gathered in `param_dtype` at a time (the one computing and the one prefetched), block activations without and
    with activation checkpointing (then: every block's input plus one block's activations during recompute), and
    frozen encoders replicated in bf16; and the host bytes per rank of building it (`host_memory`, grown from
    `source_layers` blocks)."""
    model = build_transformer(preset, device="meta")
    shapes = [tuple(p.shape) for p in model.parameters()]
    n = sum(math.prod(s) for s in shapes)
    block_params = sum(p.numel() for p in model.transformer_blocks[0].parameters())
    tokens = (image_size // downsample // model.config.patch_size) ** 2
    width = model.config.num_attention_heads * model.config.attention_head_dim
    element = torch.empty(0, dtype=DTYPES[param_dtype]).element_size()
    per_block = block_activation_bytes(model, batch_per_gpu, tokens, caption_tokens, param_dtype)
    layers = model.config.num_layers
    host_eager, host_meta = host_memory(preset, gpus, source_layers)
    return MemoryPlan(
        gpus=gpus,
        weights=4 * n / gpus,
        grads=4 * n / gpus,
        optimizer=sum(optimizer_state_bytes(optimizer, s) for s in shapes) / gpus,
        gathered_blocks=2.0 * block_params * element,
        activations=float(layers * per_block),
        activations_checkpointed=float(layers * batch_per_gpu * tokens * width * element + per_block),
        frozen=2 * frozen_params,
        host_eager=host_eager,
        host_meta=host_meta,
    )


def memory_report(
    preset: str = "sana-4.8b",
    gpus: list[int] = [8, 16, 32],
    gpu_memory_gb: float = 80.0,
    batch_per_gpu: int = 4,
    image_size: int = 1024,
    downsample: int = 32,
    caption_tokens: int = 300,
    optimizer: Literal[OPTIMIZERS] = "CAME-8bit",
    param_dtype: str = "bfloat16",
    frozen_params: float = 2.6e9,
    source_layers: int | None = None,
) -> list[MemoryPlan]:
    """Print GB per GPU of FSDP training `preset` on each of `gpus` GPUs: weights, grads, optimizer state, gathered
    blocks, frozen encoders and block activations without / with activation checkpointing; and whether it fits. Then
    the host GB per rank of building the fp32 model: eager (each rank loads the growth source whole and grows the full
    model) vs `sharding.meta_init` (each rank its shard, one block drawn whole and its slices of the source).

    Args:
        preset: The model size (tiny, small, sana-600m, sana-1.6b, sana-4.8b).
        gpus: GPU counts to compare.
        gpu_memory_gb: Memory of one GPU.
        batch_per_gpu: Images per GPU a step.
        image_size: Image side in pixels.
        downsample: Autoencoder downsampling (DC-AE f32: 32).
        caption_tokens: Caption length (Gemma: 300).
        optimizer: The optimizer whose state is counted.
        param_dtype: Compute dtype of the gathered blocks and activations.
        frozen_params: Parameters of the frozen encoders, in bf16 (Gemma-2-2B-IT ~2.6e9; 0 with precomputed features).
        source_layers: Blocks of the growth source (the preset's widths) that building the model reads; None: the
            SANA 1.5 recipe's (20 for sana-4.8b, grown from sana-1.6b; none for the others); 0: drawn from scratch.
    """
    source = GROWN_FROM.get(preset, 0) if source_layers is None else source_layers
    options = (batch_per_gpu, image_size, downsample, caption_tokens, optimizer, param_dtype, frozen_params, source)
    plans = [memory_plan(preset, g, *options) for g in gpus]
    fields = ("weights", "grads", "optimizer", "gathered_blocks", "frozen", "activations", "activations_checkpointed")
    print(f"{preset}, {optimizer}, {param_dtype} compute, {batch_per_gpu} x {image_size}px per GPU (GB per GPU)")
    print(f"{'':>26}" + "".join(f"{g:>10} GPUs" for g in gpus))
    for field in fields:
        print(f"{field:>26}" + "".join(f"{getattr(p, field) / 1e9:>15.2f}" for p in plans))
    for checkpointed in (False, True):
        name = "total, checkpointed" if checkpointed else "total, no checkpointing"
        totals = [p.total(checkpointed) for p in plans]
        cells = "".join(f"{t / 1e9:>10.2f} {'fits' if t <= gpu_memory_gb * 1e9 else 'OOM':>4}" for t in totals)
        print(f"{name:>26}{cells}")
    grown = f"grown from {source} blocks, " if source else ""
    print(f"host GB per rank of building the fp32 model ({grown}before training)")
    for field, name in (("host_eager", "eager (whole model)"), ("host_meta", "meta_init (shard)")):
        print(f"{name:>26}" + "".join(f"{getattr(p, field) / 1e9:>15.2f}" for p in plans))
    return plans
