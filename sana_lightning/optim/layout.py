"""How a parameter's optimizer state is laid out: the matrix CAME factors over, and, for an FSDP2 (DTensor)
parameter, which of its dimensions are sharded over which process groups.

The optimizer works on local tensors. A reduction over a sharded dimension is a local sum followed by an all-reduce
over the groups that shard it (`Layout.sum`), so the factored statistics are those of the full matrix. A state that
keeps some of the parameter's dimensions is stored as a DTensor sharded along those of them the parameter is sharded
along, and replicated where its reduction removed a sharded dimension (`Layout.wrap`), so that
torch.distributed.checkpoint saves, loads and reshards it.
"""

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DeviceMesh, DTensor, Replicate, Shard


def matrix_shape(shape: torch.Size) -> tuple[int, ...]:
    """The shape CAME factors over: trailing singleton dimensions dropped (1x1 convolutions become matrices)."""
    dims = list(shape)
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class Layout(NamedTuple):
    """A parameter's global matrix shape and, when it is a DTensor, its mesh and placements."""

    shape: tuple[int, ...]
    mesh: DeviceMesh | None = None
    placements: tuple = ()

    @classmethod
    def of(cls, param: torch.Tensor) -> "Layout":
        shape = matrix_shape(param.shape)
        if not isinstance(param, DTensor):
            return cls(shape)
        for placement in param.placements:
            if type(placement) not in (Shard, Replicate):  # not Partial, not _StridedShard (tensor parallel)
                raise ValueError(f"CAME supports Shard and Replicate DTensor parameters, got {param.placements}")
            if isinstance(placement, Shard) and placement.dim >= len(shape):
                raise ValueError(f"CAME cannot factor a parameter sharded along a squeezed dimension: {param.shape}")
        return cls(shape, param.device_mesh, tuple(param.placements))

    def sum(self, tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Sum of a stacked local tensor (dim 0 indexes the stack, dim d + 1 is the parameter's dim d) over the
        parameter dims `dims`, all-reduced over the process groups that shard any of them."""
        return self.all_reduce(tensor.sum(dim=tuple(d + 1 for d in dims)), dims)

    def all_reduce(self, total: torch.Tensor, dims) -> torch.Tensor:
        """`total`, a sum over the parameter dims `dims` of local values, summed over the ranks that shard them."""
        for mesh_dim, placement in enumerate(self.placements):
            if isinstance(placement, Shard) and placement.dim in dims:
                dist.all_reduce(total, group=self.mesh.get_group(mesh_dim))
        return total

    def wrap(self, tensor: torch.Tensor, kept: tuple[int | None, ...]) -> torch.Tensor:
        """A local state tensor whose dims are the parameter dims `kept` (None: a dim of its own, never sharded) as
        a DTensor laid out like the parameter; the tensor itself for a plain parameter."""
        if self.mesh is None:
            return tensor
        placements = tuple(
            Shard(kept.index(p.dim)) if isinstance(p, Shard) and p.dim in kept else Replicate() for p in self.placements
        )
        shape = torch.Size(self.shape[d] if d is not None else size for d, size in zip(kept, tensor.shape))
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(tensor, self.mesh, placements, shape=shape, stride=stride)
