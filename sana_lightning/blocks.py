"""Block-level edits of a `SanaTransformer2DModel`, shared by growth and pruning."""

import copy

import torch
from diffusers import SanaTransformer2DModel
from torch import nn


def zero_block_outputs(block: nn.Module) -> None:
    """Zero a `SanaTransformerBlock`'s self-attention, cross-attention and FFN output projections: it becomes the
    identity map (every branch is added to the residual stream)."""
    with torch.no_grad():
        for projection in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.conv_point):
            projection.weight.zero_()
            if projection.bias is not None:
                projection.bias.zero_()


def keep_blocks(model: SanaTransformer2DModel, keep: list[int]) -> SanaTransformer2DModel:
    """A copy of `model` with only the blocks `keep` (in that order); `num_layers` updated so it saves as diffusers."""
    if not keep:
        raise ValueError("a model needs at least one block: keep at least one")
    pruned = copy.deepcopy(model)
    pruned.transformer_blocks = nn.ModuleList(pruned.transformer_blocks[i] for i in keep)
    pruned.register_to_config(num_layers=len(keep))
    return pruned
