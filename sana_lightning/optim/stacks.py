"""The multi-tensor machinery of CAME's step: states kept as rows of one tensor per chunk, matrix views, and work
memory reused from step to step."""

import torch
from torch.distributed.tensor import DTensor

from sana_lightning.optim.layout import local


class Workspace:
    """Reusable work tensors by name, dtype and device: grown when too small, never freed. On a CPU a fresh large
    tensor costs page faults, several times the arithmetic done in it."""

    def __init__(self) -> None:
        self._tensors: dict[tuple, torch.Tensor] = {}

    def buffer(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        if key not in self._tensors or self._tensors[key].numel() < shape.numel():
            self._tensors[key] = torch.empty(shape.numel(), dtype=dtype, device=device)
        return self._tensors[key][: shape.numel()].view(shape)


def stacked(states: list[dict], name: str) -> torch.Tensor:
    """A chunk's `name` states as one tensor whose rows they are. Stacked once; from then on each state is a view of
    its row, so batched ops update them in place (a loaded state is restacked at its first step)."""
    tensors = [local(s[name]) for s in states]
    if len(tensors) == 1:
        return tensors[0].unsqueeze(0)
    base, size = tensors[0]._base, tensors[0].element_size()
    if (
        base is not None
        and base.shape == (len(tensors), *tensors[0].shape)
        and base.is_contiguous()
        and all(t.data_ptr() == base.data_ptr() + i * base.stride(0) * size for i, t in enumerate(tensors))
    ):
        return base
    base = torch.stack(tensors)
    for state, row in zip(states, base):
        state[name] = _rewrapped(state[name], row)
    return base


def matrices(tensors: list[torch.Tensor], shape: torch.Size) -> list[torch.Tensor]:
    """`tensors` viewed as their matrix `shape` (trailing singleton dimensions dropped)."""
    return [t if t.shape == shape else t.view(shape) for t in tensors]


def _rewrapped(state: torch.Tensor, local_tensor: torch.Tensor) -> torch.Tensor:
    """`local_tensor` in place of `state`'s own: as a DTensor laid out like `state` when that is one."""
    if not isinstance(state, DTensor):
        return local_tensor
    return DTensor.from_local(
        local_tensor, state.device_mesh, state.placements, shape=state.shape, stride=state.stride()
    )
