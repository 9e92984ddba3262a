"""Blockwise dynamic 8-bit quantisation whose blocks never cross a row.

The format of bitsandbytes' `quantize_blockwise` (the signed dynamic map of `create_dynamic_map`, one fp32 absmax
per block, values rounded to the nearest code), with blocks laid along the last dimension: the codes keep the
tensor's shape and the absmax has shape `[*rows, ceil(columns / block)]`. Both can therefore be sharded along dim 0
exactly like the parameter they belong to, which is what lets a sharded (FSDP) optimizer state be checkpointed with
torch.distributed.checkpoint and resharded. bitsandbytes' kernels quantise flat memory, whose blocks straddle rows
and shard boundaries; where its blocks coincide with ours the codes are the same.
"""

import torch
import torch.nn.functional as F


def dynamic_map(device: torch.device | str = "cpu") -> torch.Tensor:
    """bitsandbytes' signed dynamic quantisation map: 256 sorted values in [-1, 1]."""
    import bitsandbytes.functional as bnb

    return bnb.create_dynamic_map(signed=True).to(device)


def _blocks(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """`[*rows, columns]` -> `[*rows, blocks, block]`, the last block zero-padded."""
    pad = -tensor.shape[-1] % block
    return F.pad(tensor, (0, pad)).unflatten(-1, (-1, block))


def quantize(tensor: torch.Tensor, code: torch.Tensor, block: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes (shape of `tensor`) and fp32 absmax per row block (`[*rows, blocks]`)."""
    blocks = _blocks(tensor.float(), block)
    absmax = blocks.abs().amax(dim=-1)
    normalised = (blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)).flatten(-2)
    midpoints = (code[1:] + code[:-1]) / 2
    codes = torch.bucketize(normalised[..., : tensor.shape[-1]].contiguous(), midpoints, out_int32=True)
    return codes.to(torch.uint8), absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """fp32 values of `quantize`'s output."""
    values = _blocks(code[codes.long()], block) * absmax.unsqueeze(-1)
    return values.flatten(-2)[..., : codes.shape[-1]]
