"""FSDP2 for the Sana backbone: `fully_shard` per transformer block, then the whole backbone (ModelParallelStrategy)."""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.models.transformers.sana_transformer import SanaTransformerBlock
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from sana_lightning.atomic import (
    AtomicCheckpointIO,
    fsync_tree,
    is_no_space,
    no_space_error,
    replace_directory,
    temporary_path,
    tensor_bytes,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ShardingConfig:
    """How `configure_model` shards the backbone when the trainer's strategy is `ModelParallelStrategy`."""

    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (keeps only block inputs)."""
    param_dtype: str = "float32"
    """Dtype blocks compute in (`bfloat16` on GPUs); the sharded master weights stay float32."""
    reduce_dtype: str = "float32"
    """Dtype gradients are reduce-scattered in."""
    reshard_after_forward: bool = True
    """Free each block's gathered weights after its forward (ZeRO-3); False keeps them until backward (ZeRO-2)."""
    meta_init: bool = False
    """Build the backbone (and its EMA) on the meta device and fill each rank's shard after sharding: safetensors
    sources are read slice by slice, fresh blocks drawn per block, so no rank ever holds the whole model (the same
    values as building it whole; a preset's blocks are drawn per block). Also used by a single process."""


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}': use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def is_sharded(module: torch.nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def shard_transformer(transformer: torch.nn.Module, mesh: DeviceMesh, config: ShardingConfig) -> None:
    """Shard `transformer` in place over the data-parallel `mesh`: each block is one FSDP unit, the rest (patch
    embedding, caption projection, time embedding, output head) is the root unit."""
    if config.activation_checkpointing:
        apply_activation_checkpointing(transformer, check_fn=lambda m: isinstance(m, SanaTransformerBlock))
    policy = MixedPrecisionPolicy(param_dtype=_dtype(config.param_dtype), reduce_dtype=_dtype(config.reduce_dtype))
    options = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)
    for block in transformer.transformer_blocks:
        fully_shard(block, **options)
    fully_shard(transformer, **options)


def mesh_device(mesh: DeviceMesh | None) -> torch.device:
    """The device a rank of `mesh` holds its shards on (the CPU without a mesh)."""
    if mesh is None or mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.get_device_module(mesh.device_type).current_device())


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` with every rank on the data-parallel (FSDP) axis, however many devices and
    nodes the trainer has; `SanaFlowModule.configure_model` shards the backbone over it.

    Checkpoints are written atomically: a sharded checkpoint folder is saved beside its target under a temporary name
    and renamed into place once every rank has written its shard; a single file goes through `AtomicCheckpointIO`
    (the default `checkpoint_io`)."""

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    @property
    def checkpoint_io(self) -> CheckpointIO:
        if self._checkpoint_io is None:
            self._checkpoint_io = AtomicCheckpointIO()
        elif isinstance(self._checkpoint_io, _WrappingCheckpointIO):
            self._checkpoint_io.checkpoint_io = AtomicCheckpointIO()  # only if no base writer was given
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        self._checkpoint_io = io

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(filepath))
        staging = Path(self.broadcast(temporary_path(path)))  # rank 0's name, the same on every rank
        needed = tensor_bytes(checkpoint)
        if self.global_rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        self.barrier()
        failure = None
        try:
            super().save_checkpoint(checkpoint, staging, storage_options)
            if self.global_rank == 0:
                fsync_tree(staging)
        except (Exception, CheckpointException) as error:  # a failed DCP save raises on every rank
            failure = error
        if not self.reduce_boolean_decision(failure is None, all=True):
            if self.global_rank == 0:
                shutil.rmtree(staging, ignore_errors=True)
            if _no_space(failure):
                raise no_space_error(path, needed) from failure
            raise failure or RuntimeError(f"saving the sharded checkpoint '{path}' failed on another rank")
        if self.global_rank == 0:
            replace_directory(staging, path)
        self.barrier()


def _no_space(error: BaseException | None) -> bool:
    """A full disk, also inside a DCP `CheckpointException` (which carries each failed rank's error)."""
    if isinstance(error, CheckpointException):
        return any(is_no_space(exc) for exc, _ in error.failures.values())
    return is_no_space(error)
