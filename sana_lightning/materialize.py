"""Filling a transformer built on the `meta` device, sharded (FSDP2 DTensors) or not: each tensor's local part only.

A tensor's value comes from a `Fill`: the name of a source tensor (read lazily, only the slice this rank holds), a
constant, or the full tensor (a fresh block's, computed on the CPU, then sliced). Sources are read by `open_source`:
a diffusers directory's safetensors files one tensor (slice) at a time, or a `.ckpt` memory-mapped (`torch.load`
maps the whole file; each rank touches the pages of its slices).
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from sana_lightning.blocks import seeded_model
from sana_lightning.checkpoints import checkpoint_weights, read_checkpoint, resolve_path
from sana_lightning.presets import transformer_folder

Fill = str | float | torch.Tensor
"""A source tensor's name, a constant, or the full tensor."""
Read = Callable[[str, tuple[slice, ...]], torch.Tensor]
"""`read(name, index)`: the part `index` (all of it when empty) of source tensor `name`."""


def local_part(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """The data this rank holds of `tensor` and where it sits in the full tensor (`()`: all of it)."""
    if not isinstance(tensor, DTensor):
        return tensor, ()
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    local = tensor.to_local()
    assert tuple(local.shape) == tuple(shape), (local.shape, shape)
    return local, tuple(slice(start, start + size) for start, size in zip(offset, shape))


def fill(module: torch.nn.Module, fills: Callable[[str], Fill], read: Read, device: torch.device) -> None:
    """Materialise `module` (a `SanaTransformer2DModel` on meta, sharded or not) on `device`, each state-dict tensor's
    local part from `fills(name)`. Buffers outside the state dict (position embeddings) are rebuilt from the config."""
    module.to_empty(device=device)
    state = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in state.items():
            local, index = local_part(tensor)
            value = fills(name)
            if isinstance(value, float):
                local.fill_(value)
            elif local.numel():
                local.copy_(read(value, index) if isinstance(value, str) else value[index])
        transient = _transient_buffers(module, state)
        outside = seeded_model(module.config, 0, -1, 0) if transient else None
        for name in transient:
            module.get_buffer(name).copy_(outside.get_buffer(name))


def copy_local_parts(module: torch.nn.Module, source: torch.nn.Module, device: torch.device) -> None:
    """Materialise `module` (on meta) on `device` as a copy of `source`, sharded alike: local part by local part."""
    module.to_empty(device=device)
    values, state = source.state_dict(), module.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in state.items():
            local_part(tensor)[0].copy_(local_part(values[name])[0])
        for name in _transient_buffers(module, state):
            module.get_buffer(name).copy_(source.get_buffer(name))


def _transient_buffers(module: torch.nn.Module, state: dict) -> list[str]:
    """Buffers outside the state dict (e.g. sincos position embeddings): functions of the config."""
    return [name for name, _ in module.named_buffers() if name not in state]


def state_reader(state: dict[str, torch.Tensor], path: str) -> Read:
    """Reads of an in-memory (or memory-mapped) state dict, refusing non-finite values."""
    return lambda name, index: _finite(state[name][index], name, path)


@contextmanager
def open_source(path: str, weights: str = "ema") -> Iterator[Read]:
    """Lazy reads of a source's weights: a diffusers directory's safetensors files (each tensor's slice read on
    demand) or a checkpoint file's `weights` (ema or raw), memory-mapped."""
    path = resolve_path(path)
    if not Path(path).is_dir():
        yield state_reader(checkpoint_weights(read_checkpoint(path), weights), path)
        return
    folder = Path(transformer_folder(path))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"'{folder}' holds no .safetensors weights: a sharding.meta_init run reads safetensors lazily; write them "
            "with save_pretrained (`python -m sana_lightning.cli consolidate CKPT --format safetensors`)"
        )
    with ExitStack() as stack:
        handles = {}
        for file in files:
            handle = stack.enter_context(safe_open(file, framework="pt"))
            handles.update(dict.fromkeys(handle.keys(), (handle, file)))

        def read(name: str, index: tuple[slice, ...]) -> torch.Tensor:
            handle, file = handles[name]
            return _finite(handle.get_slice(name)[index] if index else handle.get_tensor(name), name, file)

        yield read


def _finite(tensor: torch.Tensor, name: str, path) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"'{path}' holds non-finite weights (NaN/Inf in {name}): use an earlier checkpoint")
    return tensor
