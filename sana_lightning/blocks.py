"""Block-level edits of a `SanaTransformer2DModel`, shared by growth and pruning."""

import copy

import torch
from diffusers import SanaTransformer2DModel
from torch import nn

OUTPUT_PROJECTIONS = ("attn1.to_out.0", "attn2.to_out.0", "ff.conv_point")
"""A `SanaTransformerBlock`'s self-attention, cross-attention and FFN output projections."""


def output_names(block: nn.Module, gate: bool = False) -> list[str]:
    """The names (in the block's state dict) of the tensors `zero_block_outputs` zeroes; works on the meta device."""
    names = [
        f"{projection}.{kind}"
        for projection in OUTPUT_PROJECTIONS
        for kind in ("weight", "bias")
        if getattr(block.get_submodule(projection), kind) is not None
    ]
    return names + ["scale_shift_table"] * gate


def zero_block_outputs(block: nn.Module, gate: bool = False) -> None:
    """Zero a `SanaTransformerBlock`'s self-attention, cross-attention and FFN output projections: it becomes the
    identity map (every branch is added to the residual stream). `gate` also zeroes its `scale_shift_table` (the
    official zero-gate option; the gates stay the timestep embedding's, so the projections still get gradients)."""
    with torch.no_grad():
        for name in output_names(block, gate):
            block.get_parameter(name).zero_()


def seeded_model(
    config: dict, seed: int, index: int, num_layers: int, official: bool = False
) -> SanaTransformer2DModel:
    """A `config` model of `num_layers` blocks on the CPU, with diffusers' init (then `official_init` on its blocks
    when `official`) drawn from a generator seeded by (seed, index) alone: the same values in any process, whatever
    the global random state. Growth's fresh block i is block 0 of `seeded_model(config, seed, i, 1, ...)`, whether
    the model is built whole or shard by shard."""
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(hash((seed, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        model = SanaTransformer2DModel(**{**config, "num_layers": num_layers})
        for block in model.transformer_blocks if official else ():
            official_init(block)
    return model


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
