"""FSDP2 for the Sana backbone: `fully_shard` per transformer block, then the whole backbone (ModelParallelStrategy)."""

from dataclasses import dataclass

import torch
from diffusers.models.transformers.sana_transformer import SanaTransformerBlock
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

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


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` with every rank on the data-parallel (FSDP) axis, however many devices and
    nodes the trainer has; `SanaFlowModule.configure_model` shards the backbone over it."""

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()
