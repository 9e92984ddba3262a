"""CAME and CAME-8bit (Luo et al., 2023; SANA 1.5 section 2.1).

CAME keeps Adafactor's factored second moment (row and column statistics of g^2) and adds a confidence term: the
update is scaled by the factored inverse root of the instability (update - first moment)^2. Update clipping by RMS,
decoupled weight decay. `CAME` matches the reference `came-pytorch` step for step, except that trailing singleton
dimensions are squeezed before factoring, so a 1x1 convolution [out, in, 1, 1] is factored as the matrix it is
(came-pytorch factors its two singleton dimensions and stores 4x the weight's size).

`CAME8bit` stores the first moment (`exp_avg`) of large matrices in 8 bits, in blocks of up to 2048 values laid
along rows (`blockwise.py`) so that the 8-bit state shards like its parameter. `quantization="dynamic"` (default):
bitsandbytes' signed dynamic map and kernels, one fp32 absmax per block. `"minmax"`: SANA 1.5's own quantiser
(`CAME8BitWrapper`), 256 uniform levels between each block's min and max. The dynamic map is the more accurate on
heavy-tailed values, its levels being dense near zero: on Student-t (3 degrees of freedom) values in 2048-blocks the
RMS error is 1.9% of the values' RMS against 2.5% for min-max (mean abs error 1.8% vs 3.1%; min-max has the smaller
worst case, 0.20 vs 0.51; `tests/test_came.py`). The factored statistics are tiny and stay fp32, as do tensors that
are 1-D or smaller than `min_8bit_size`.

Under FSDP2 the parameters are DTensors: every elementwise step runs on the local shard, and the row/column means
of the factored statistics are taken by DTensor reductions, so the factored moments are those of the full matrix.
The 8-bit codes and their absmax (or min and max) are DTensors sharded like the parameter, so
torch.distributed.checkpoint saves, loads and reshards them.
"""

from typing import Literal

import torch
from torch.distributed.tensor import DTensor

from sana_lightning.optim.blockwise import dequantize, dequantize_minmax, dynamic_map, quantize, quantize_minmax

QUANT_BLOCKSIZE = 2048


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _matrix_shape(shape: torch.Size) -> tuple[int, ...]:
    """The shape CAME factors over: trailing singleton dimensions dropped (1x1 convolutions become matrices)."""
    dims = list(shape)
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.norm(2) / (tensor.numel() ** 0.5)


def _approx_inverse_sqrt(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Adafactor's rank-1 estimate of 1/sqrt(V) from V's row and column means."""
    r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
    return r_factor * col.unsqueeze(-2).rsqrt()


class CAME(torch.optim.Optimizer):
    """Confidence-guided Adaptive Memory Efficient optimizer (fp32 states)."""

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        eps: tuple[float, float] = (1e-30, 1e-16),
        clip_threshold: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not all(0.0 <= beta <= 1.0 for beta in betas):
            raise ValueError(f"betas must lie in [0, 1], got {betas}")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=tuple(eps), clip_threshold=clip_threshold, weight_decay=weight_decay
        )
        super().__init__(params, defaults)

    # First-moment storage: plain fp32 here, 8-bit blockwise in CAME8bit.
    def _init_exp_avg(self, state: dict, grad: torch.Tensor) -> None:
        state["exp_avg"] = torch.zeros_like(grad)

    def _read_exp_avg(self, state: dict, grad: torch.Tensor) -> torch.Tensor:
        return state["exp_avg"]

    def _write_exp_avg(self, state: dict, exp_avg: torch.Tensor) -> None:
        pass  # updated in place

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            eps1, eps2 = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CAME does not support sparse gradients")
                grad = p.grad.float()
                shape = _matrix_shape(grad.shape)
                factored = len(shape) >= 2
                if factored:
                    grad = grad.reshape(shape)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    self._init_exp_avg(state, grad)
                    if factored:
                        for name, reduced in (("row", shape[:-1]), ("col", shape[:-2] + shape[-1:])):
                            state[f"exp_avg_sq_{name}"] = grad.new_zeros(reduced)
                            state[f"exp_avg_res_{name}"] = grad.new_zeros(reduced)
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                state["step"] += 1

                update = grad.square() + eps1
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2).add_(update.mean(dim=-1), alpha=1 - beta2)
                    col.mul_(beta2).add_(update.mean(dim=-2), alpha=1 - beta2)
                    update = _approx_inverse_sqrt(row, col).mul_(grad)
                else:
                    state["exp_avg_sq"].mul_(beta2).add_(update, alpha=1 - beta2)
                    update = state["exp_avg_sq"].rsqrt().mul_(grad)
                update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))

                exp_avg = self._read_exp_avg(state, grad)
                exp_avg.mul_(beta1).add_(update, alpha=1 - beta1)
                if factored:
                    res = (update - exp_avg).square_().add_(eps2)
                    row, col = state["exp_avg_res_row"], state["exp_avg_res_col"]
                    row.mul_(beta3).add_(res.mean(dim=-1), alpha=1 - beta3)
                    col.mul_(beta3).add_(res.mean(dim=-2), alpha=1 - beta3)
                    update = _approx_inverse_sqrt(row, col).mul_(exp_avg)
                else:
                    update = exp_avg.clone()
                self._write_exp_avg(state, exp_avg)

                if group["weight_decay"]:
                    p.add_(p, alpha=-group["weight_decay"] * group["lr"])
                p.sub_(update.mul_(group["lr"]).reshape(p.shape).to(p.dtype))
        return loss


class CAME8bit(CAME):
    """CAME with the first moment of large matrices stored 8-bit (blockwise dynamic or min-max quantisation)."""

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        min_8bit_size: int = 16384,
        quantization: Literal["dynamic", "minmax"] = "dynamic",
        **kwargs,
    ) -> None:
        if quantization not in ("dynamic", "minmax"):
            raise ValueError(f"quantization must be 'dynamic' or 'minmax', got {quantization!r}")
        super().__init__(params, lr=lr, **kwargs)
        self.min_8bit_size = min_8bit_size
        self.quantization = quantization

    def _quantized(self, grad: torch.Tensor) -> bool:
        return grad.dim() >= 2 and grad.numel() >= self.min_8bit_size

    def _init_exp_avg(self, state: dict, grad: torch.Tensor) -> None:
        if not self._quantized(grad):
            return super()._init_exp_avg(state, grad)
        self._write_exp_avg(state, torch.zeros_like(grad))

    def _read_exp_avg(self, state: dict, grad: torch.Tensor) -> torch.Tensor:
        if "exp_avg" in state:
            return state["exp_avg"]
        codes = _local(state["exp_avg_q"])
        if self.quantization == "minmax":
            values = dequantize_minmax(
                codes, _local(state["exp_avg_min"]), _local(state["exp_avg_max"]), QUANT_BLOCKSIZE
            )
        else:
            values = dequantize(codes, _local(state["exp_avg_absmax"]), self._code(codes.device), QUANT_BLOCKSIZE)
        return _like(values, grad)

    def _write_exp_avg(self, state: dict, exp_avg: torch.Tensor) -> None:
        if "exp_avg" in state:
            return
        local = _local(exp_avg)
        if self.quantization == "minmax":
            codes, low, high = quantize_minmax(local, QUANT_BLOCKSIZE)
            state["exp_avg_min"], state["exp_avg_max"] = _like(low, exp_avg), _like(high, exp_avg)
        else:
            codes, absmax = quantize(local, self._code(local.device), QUANT_BLOCKSIZE)
            state["exp_avg_absmax"] = _like(absmax, exp_avg)
        state["exp_avg_q"] = _like(codes, exp_avg)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        key = {"dynamic": "exp_avg_absmax", "minmax": "exp_avg_min"}[self.quantization]
        for state in self.state.values():  # torch casts every state tensor to its parameter's dtype
            if "exp_avg_q" in state:
                if key not in state:
                    other = "minmax" if self.quantization == "dynamic" else "dynamic"
                    raise ValueError(
                        f"this optimizer state was saved with quantization={other!r}: set CAME8bit's quantization to it"
                    )
                state["exp_avg_q"] = state["exp_avg_q"].to(torch.uint8)

    def _code(self, device: torch.device) -> torch.Tensor:
        if getattr(self, "_dynamic_map", None) is None or self._dynamic_map.device != device:
            self._dynamic_map = dynamic_map(device)
        return self._dynamic_map


def _like(local: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`local` as a DTensor sharded like `reference` (same mesh and placements, rows = its dim 0) when that is one."""
    if not isinstance(reference, DTensor):
        return local
    shape = torch.Size((*reference.shape[:-1], local.shape[-1]))  # codes: the matrix; absmax: blocks per row
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, reference.device_mesh, reference.placements, shape=shape, stride=stride)
