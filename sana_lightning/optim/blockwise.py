"""Blockwise dynamic 8-bit quantisation whose blocks never cross a row.

bitsandbytes' `quantize_blockwise` format (the signed dynamic map of `create_dynamic_map`, one fp32 absmax per
block; its kernels on CUDA, a lookup table on the CPU), with blocks laid along the last dimension: the block size is
the largest bitsandbytes size up to `max_block` that divides the row (rows are padded to a whole number of 64-blocks
only when none does), the codes keep the tensor's shape and the absmax has shape `[*rows, blocks per row]`. Both can
therefore be sharded along dim 0 exactly like the parameter they belong to, which is what lets a sharded (FSDP)
optimizer state be checkpointed with torch.distributed.checkpoint and resharded. (bitsandbytes' own layout is flat
memory, whose blocks straddle rows and shard boundaries.) The padding is transient: only the tensor's own codes are
stored.

`quantize_minmax` is SANA's CAME-8bit quantiser on the same row blocks: 256 uniform levels between each block's min
and max (their `CAME8BitWrapper` quantises 2,048-value chunks the same way).
"""

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

BLOCK_SIZES = (4096, 2048, 1024, 512, 256, 128, 64)  # bitsandbytes' blockwise sizes


LOOKUP_BITS = 20
"""Top bits of a float32 (sign, exponent, 11 mantissa bits) that index the quantisation lookup table."""


class Codebook(NamedTuple):
    """A sorted 8-bit code and its lookup table: `lookup[b]` is the code of the value nearest to the middle of the
    floats whose top `LOOKUP_BITS` bits are `b` (sign flipped, so that the index is non-negative). A bin spans
    2^-11 of its values' magnitude, so a value is given the nearest code unless it lies within that of a midpoint
    between two codes, where it may get the other one: an error well below the codes' spacing (1.4% or more)."""

    values: torch.Tensor
    lookup: torch.Tensor


@functools.cache
def dynamic_codebook(device: torch.device | str = "cpu") -> Codebook:
    """bitsandbytes' signed dynamic quantisation map (256 sorted values in [-1, 1]) and its lookup table."""
    import bitsandbytes.functional as bnb

    values = bnb.create_dynamic_map(signed=True)
    shift = 32 - LOOKUP_BITS
    bins = (torch.arange(1 << LOOKUP_BITS, dtype=torch.int64) - (1 << (LOOKUP_BITS - 1))) << shift
    middles = (bins | (1 << (shift - 1))).int().view(torch.float32).nan_to_num(0.0).clamp(-1, 1)
    lookup = torch.bucketize(middles, (values[1:] + values[:-1]) / 2).to(torch.uint8)
    return Codebook(values.to(device), lookup.to(device))


def block_size(columns: int, max_block: int = 2048) -> int:
    """The largest bitsandbytes block size <= `max_block` that divides `columns` (else 64: the row is padded)."""
    return next((b for b in BLOCK_SIZES if b <= max_block and columns % b == 0), 64)


def _padded(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """Rows zero-padded to a multiple of `block` columns, contiguous (so flat blocks are row blocks)."""
    pad = -tensor.shape[-1] % block
    return (F.pad(tensor, (0, pad)) if pad else tensor).contiguous()


def quantize(tensor: torch.Tensor, codebook: Codebook, max_block: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes (shape of `tensor`) and fp32 absmax per row block (`[*rows, blocks]`)."""
    blocks = -(-tensor.shape[-1] // block_size(tensor.shape[-1], max_block))
    codes = torch.empty(tensor.shape, dtype=torch.uint8, device=tensor.device)
    absmax = torch.empty((*tensor.shape[:-1], blocks), device=tensor.device)
    quantize_into(tensor.to(torch.float32, copy=True), codebook, codes, absmax, max_block)
    return codes, absmax


def quantize_into(
    values: torch.Tensor, codebook: Codebook, codes: torch.Tensor, absmax: torch.Tensor, max_block: int = 2048
) -> None:
    """`quantize` written into `codes` and `absmax`, using the fp32 `values` as work memory (they are overwritten).

    bitsandbytes' kernel on CUDA; batched torch ops elsewhere: a lookup by the top bits of each value scaled by its
    block's absmax (`Codebook`; bitsandbytes' CPU binary search gives another code to ~0.5% of values, where it is
    the farther one, `tests/test_came.py`)."""
    block = block_size(values.shape[-1], max_block)
    padded = _padded(values, block)
    if padded.is_cuda:
        import bitsandbytes.functional as bnb

        quantized, state = bnb.quantize_blockwise(padded, code=codebook.values, blocksize=block)
        codes.copy_(quantized[..., : values.shape[-1]])
        absmax.copy_(state.absmax.view(absmax.shape))
        return
    blocks = padded.view(*padded.shape[:-1], -1, block)
    torch.maximum(blocks.amax(dim=-1), blocks.amin(dim=-1).neg_(), out=absmax)  # two fast passes (abs() allocates)
    blocks.mul_(absmax.clamp(min=torch.finfo(torch.float32).tiny).reciprocal().unsqueeze(-1))
    bins = blocks.view(torch.int32).bitwise_right_shift_(32 - LOOKUP_BITS).add_(1 << (LOOKUP_BITS - 1))
    if padded is values and codes.is_contiguous():
        torch.index_select(codebook.lookup, 0, bins.view(-1), out=codes.view(-1))
    else:
        codes.copy_(torch.index_select(codebook.lookup, 0, bins.view(-1)).view(padded.shape)[..., : values.shape[-1]])


def dequantize(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    codebook: Codebook,
    max_block: int = 2048,
    out: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 values of `quantize`'s output (written into `out` when given; `index`: reused int32 work memory of the
    codes' size for the CPU lookup, where fresh memory costs page faults)."""
    block = block_size(codes.shape[-1], max_block)
    padded = _padded(codes, block)
    if padded.is_cuda:
        import bitsandbytes.functional as bnb

        values = bnb.dequantize_blockwise(padded, absmax=absmax.flatten(), code=codebook.values, blocksize=block)
    else:
        target = out if out is not None and padded is codes else torch.empty(padded.shape, device=codes.device)
        fresh = index is None or padded is not codes
        positions = padded.flatten().int() if fresh else index.view(-1).copy_(padded.flatten())
        values = torch.index_select(codebook.values, 0, positions, out=target.view(-1)).view(padded.shape)
        values.view(*absmax.shape, block).mul_(absmax.unsqueeze(-1))
    values = values[..., : codes.shape[-1]]
    return values if out is None or values.data_ptr() == out.data_ptr() else out.copy_(values)


def _blocks(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """`[*rows, blocks, block]` view of `tensor`, rows padded by repeating their last value (min and max unchanged)."""
    pad = -tensor.shape[-1] % block
    if pad:
        tensor = torch.cat([tensor, tensor[..., -1:].expand(*tensor.shape[:-1], pad)], dim=-1)
    return tensor.reshape(*tensor.shape[:-1], -1, block)


def quantize_minmax(tensor: torch.Tensor, max_block: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 codes (shape of `tensor`) of 256 uniform levels from each row block's min to its max, and the fp32 min
    and max per row block (`[*rows, blocks]`)."""
    blocks = _blocks(tensor.float(), block_size(tensor.shape[-1], max_block))
    low, high = blocks.amin(dim=-1), blocks.amax(dim=-1)
    scale = ((high - low) / 255).unsqueeze(-1)
    codes = ((blocks - low.unsqueeze(-1)) / scale.clamp(min=torch.finfo(torch.float32).tiny)).round_().clamp_(0, 255)
    codes = codes.to(torch.uint8).flatten(-2)[..., : tensor.shape[-1]].contiguous()
    return codes, low, high


def dequantize_minmax(
    codes: torch.Tensor, low: torch.Tensor, high: torch.Tensor, max_block: int = 2048
) -> torch.Tensor:
    """fp32 values of `quantize_minmax`'s output."""
    blocks = _blocks(codes, block_size(codes.shape[-1], max_block)).float()
    values = blocks * ((high - low) / 255).unsqueeze(-1) + low.unsqueeze(-1)
    return values.flatten(-2)[..., : codes.shape[-1]]
