"""Block-level edits of a `SanaTransformer2DModel`, shared by growth and pruning."""

import copy

import torch
from diffusers import SanaTransformer2DModel
from torch import nn


def zero_block_outputs(block: nn.Module, gate: bool = False) -> None:
    """Zero a `SanaTransformerBlock`'s self-attention, cross-attention and FFN output projections: it becomes the
    identity map (every branch is added to the residual stream). `gate` also zeroes its `scale_shift_table` (the
    official zero-gate option; the gates stay the timestep embedding's, so the projections still get gradients)."""
    with torch.no_grad():
        for projection in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.conv_point):
            projection.weight.zero_()
            if projection.bias is not None:
                projection.bias.zero_()
        if gate:
            block.scale_shift_table.zero_()


def official_init(block: nn.Module) -> None:
    """SANA's init of a new block when growing: linear and 1x1-convolution weights ~ N(0, 0.02^2), the depthwise
    convolution's ~ N(0, 0.2^2) ("x 0.2" read as its standard deviation), biases zero. Our choices: QK-norm weights
    stay one and `scale_shift_table` keeps diffusers' randn / sqrt(dim) (the official init names neither)."""
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
                module.weight.normal_(0.0, 0.2 if depthwise else 0.02)
                if module.bias is not None:
                    module.bias.zero_()


def keep_blocks(model: SanaTransformer2DModel, keep: list[int]) -> SanaTransformer2DModel:
    """A copy of `model` with only the blocks `keep` (in that order); `num_layers` updated so it saves as diffusers."""
    if not keep:
        raise ValueError("a model needs at least one block: keep at least one")
    pruned = copy.deepcopy(model)
    pruned.transformer_blocks = nn.ModuleList(pruned.transformer_blocks[i] for i in keep)
    pruned.register_to_config(num_layers=len(keep))
    return pruned
