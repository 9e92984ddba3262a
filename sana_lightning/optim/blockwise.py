"""Blockwise dynamic 8-bit quantisation whose blocks never cross a row.

bitsandbytes' `quantize_blockwise` format (the signed dynamic map of `create_dynamic_map`, one fp32 absmax per block)
and kernels, with blocks laid along the last dimension: the block size is the largest bitsandbytes size up to
`max_block` that divides the row (rows are padded to a whole number of 64-blocks only when none does), the codes keep
the tensor's shape and the absmax has shape `[*rows, blocks per row]`. Both can therefore be
sharded along dim 0 exactly like the parameter they belong to, which is what lets a sharded (FSDP) optimizer state
be checkpointed with torch.distributed.checkpoint and resharded. (bitsandbytes' own layout is flat memory, whose
blocks straddle rows and shard boundaries.) The padding is transient: only the tensor's own codes are stored.

`quantize_minmax` is SANA's CAME-8bit quantiser on the same row blocks: 256 uniform levels between each block's min
and max (their `CAME8BitWrapper` quantises 2,048-value chunks the same way).
"""

import torch
import torch.nn.functional as F


def dynamic_map(device: torch.device | str = "cpu") -> torch.Tensor:
    """bitsandbytes' signed dynamic quantisation map: 256 sorted values in [-1, 1]."""
    import bitsandbytes.functional as bnb

    return bnb.create_dynamic_map(signed=True).to(device)


BLOCK_SIZES = (4096, 2048, 1024, 512, 256, 128, 64)  # bitsandbytes' blockwise sizes


def block_size(columns: int, max_block: int = 2048) -> int:
    """The largest bitsandbytes block size <= `max_block` that divides `columns` (else 64: the row is padded)."""
    return next((b for b in BLOCK_SIZES if b <= max_block and columns % b == 0), 64)


def _padded(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """Rows zero-padded to a multiple of `block` columns, contiguous (so flat blocks are row blocks)."""
    pad = -tensor.shape[-1] % block
    return (F.pad(tensor, (0, pad)) if pad else tensor).contiguous()


def quantize(tensor: torch.Tensor, code: torch.Tensor, max_block: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes (shape of `tensor`) and fp32 absmax per row block (`[*rows, blocks]`)."""
    import bitsandbytes.functional as bnb

    block = block_size(tensor.shape[-1], max_block)
    padded = _padded(tensor.float(), block)
    codes, state = bnb.quantize_blockwise(padded, code=code, blocksize=block)
    absmax = state.absmax.view(*tensor.shape[:-1], padded.shape[-1] // block)
    return codes[..., : tensor.shape[-1]].contiguous(), absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, max_block: int = 2048) -> torch.Tensor:
    """fp32 values of `quantize`'s output."""
    import bitsandbytes.functional as bnb

    block = block_size(codes.shape[-1], max_block)
    padded = _padded(codes, block)
    values = bnb.dequantize_blockwise(padded, absmax=absmax.flatten(), code=code, blocksize=block)
    return values[..., : codes.shape[-1]]


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
