"""CAME and CAME-8bit (Luo et al., 2023; SANA 1.5 section 2.1), multi-tensor.

CAME keeps Adafactor's factored second moment (row and column statistics of g^2) and adds a confidence term: the
update is scaled by the factored inverse root of the instability (update - first moment)^2. Update clipping by RMS,
decoupled weight decay. `CAME` matches the reference `came-pytorch` step for step (to float rounding), except that
trailing singleton dimensions are squeezed before factoring, so a 1x1 convolution [out, in, 1, 1] is factored as the
matrix it is (came-pytorch factors its two singleton dimensions and stores 4x the weight's size).

The step is multi-tensor: parameters of one layout (matrix shape, sharding), dtype and device are stacked into chunks
of up to `STACK_NUMEL` elements and each chunk's statistics, update, clipping and confidence terms are batched ops
over the stack (a Sana model is many tensors of a few shapes); the chunk's states are rows of one tensor, updated in
place (`stacks.py`). A tensor as large as a chunk is updated alone, through views of its own storage. Work tensors are
reused from step to step.

`CAME8bit` stores the first moment (`exp_avg`) of large matrices in 8 bits, in blocks of up to 2048 values laid
along rows (`blockwise.py`) so that the 8-bit state shards like its parameter. `quantization="dynamic"` (default):
bitsandbytes' signed dynamic map, one fp32 absmax per block (bitsandbytes' kernels on CUDA, batched torch ops on the
CPU). `"minmax"`: SANA 1.5's own quantiser (`CAME8BitWrapper`), 256 uniform levels between each block's min and
max. The dynamic map is the more accurate on heavy-tailed values, its levels being dense near zero: on Student-t
(3 degrees of freedom) values in 2048-blocks the RMS error is 1.9% of the values' RMS against 2.5% for min-max (mean
abs error 1.8% vs 3.1%; min-max has the smaller worst case, 0.20 vs 0.51; `tests/test_came.py`). The factored
statistics are tiny and stay fp32, as do tensors that are 1-D or smaller than `min_8bit_size`.

Under FSDP2 the parameters are DTensors: the step runs on the local shards, and reductions over a sharded dimension
are all-reduced (`layout.Layout`), so the factored moments are those of the full matrix. Every state is a DTensor
laid out like its parameter, so torch.distributed.checkpoint saves, loads and reshards it.
"""

import math
from typing import Literal

import torch

from sana_lightning.optim.blockwise import (
    dequantize,
    dequantize_minmax,
    dynamic_codebook,
    quantize,
    quantize_into,
    quantize_minmax,
)
from sana_lightning.optim.layout import Layout, local
from sana_lightning.optim.stacks import Workspace, matrices, stacked

QUANT_BLOCKSIZE = 2048
STACK_NUMEL = 1 << 20
"""Elements per stacked chunk: smaller tensors of one layout are updated together, larger ones alone."""


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
        self._workspace = Workspace()
        self._plans: dict[int, tuple[tuple[int, ...], list]] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("CAME does not support sparse gradients")
            for layout, chunk in self._chunks(index, params):
                self._update(chunk, layout, group)
        return loss

    def _chunks(self, index: int, params: list[torch.Tensor]) -> list[tuple[Layout, list[torch.Tensor]]]:
        """`params` in chunks of one layout, dtype and device, up to `STACK_NUMEL` elements (planned once for a set
        of parameters with gradients); states initialised on first sight."""
        key = tuple(map(id, params))
        if self._plans.get(index, (None,))[0] != key:
            kinds: dict[tuple, list[torch.Tensor]] = {}
            for p in params:
                kinds.setdefault((Layout.of(p), p.dtype, p.device), []).append(p)
            plan = []
            for (layout, *_), same in kinds.items():
                per_chunk = max(1, STACK_NUMEL // max(1, math.prod(layout.shape)))
                plan += [(layout, same[i : i + per_chunk]) for i in range(0, len(same), per_chunk)]
            self._plans[index] = (key, plan)
        plan = self._plans[index][1]
        for layout, chunk in plan:
            for p in chunk:
                if not self.state[p]:
                    self._init_state(p, layout)
        return plan

    def _init_state(self, p: torch.Tensor, layout: Layout) -> None:
        shape = local(p).shape[: len(layout.shape)]
        n = len(shape)

        def zeros(kept: tuple[int, ...]) -> torch.Tensor:
            return layout.wrap(torch.zeros([shape[d] for d in kept], device=local(p).device), kept)

        state = self.state[p]
        state["step"] = 0
        if n >= 2:
            for name in ("exp_avg_sq", "exp_avg_res"):
                state[f"{name}_row"] = zeros(tuple(range(n - 1)))
                state[f"{name}_col"] = zeros((*range(n - 2), n - 1))
        else:
            state["exp_avg_sq"] = zeros(tuple(range(n)))
        self._init_exp_avg(state, zeros(tuple(range(n))), layout)

    # First-moment storage: plain fp32 here, 8-bit blockwise in CAME8bit.
    def _init_exp_avg(self, state: dict, zeros: torch.Tensor, layout: Layout) -> None:
        state["exp_avg"] = zeros

    def _read_exp_avg(self, states: list[dict]) -> torch.Tensor:
        return stacked(states, "exp_avg")

    def _write_exp_avg(self, states: list[dict], exp_avg: torch.Tensor) -> None:
        pass  # updated in place

    def _update(self, params: list[torch.Tensor], layout: Layout, group: dict) -> None:
        """One CAME step of a chunk of parameters of one layout, as batched ops over their stack."""
        beta1, beta2, beta3 = group["betas"]
        eps1, eps2 = group["eps"]
        n = len(layout.shape)
        shape = local(params[0]).shape[:n]
        states = [self.state[p] for p in params]
        for state in states:
            state["step"] += 1

        grads = matrices([local(p.grad) for p in params], shape)
        if len(grads) == 1:
            grad = grads[0].unsqueeze(0).float()
        else:
            buffer = self._workspace.buffer("grad", torch.Size((len(grads), *shape)), grads[0].dtype, grads[0].device)
            grad = torch.stack(grads, out=buffer).float()
        work = self._workspace.buffer("work", grad.shape, torch.float32, grad.device)
        factored = n >= 2
        if factored:
            row, col, res_row, res_col = (
                stacked(states, name)
                for name in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col")
            )
            torch.mul(grad, grad, out=work)
            self._average(row, layout, work, n - 1, beta2, eps1)
            self._average(col, layout, work, n - 2, beta2, eps1)
            torch.mul(grad, self._row_factor(row, layout), out=work).mul_(col.rsqrt().unsqueeze(-2))
        else:
            exp_avg_sq = stacked(states, "exp_avg_sq")
            torch.mul(grad, grad, out=work).add_(eps1)
            exp_avg_sq.mul_(beta2).add_(work, alpha=1 - beta2)
            torch.rsqrt(exp_avg_sq, out=work).mul_(grad)
        squares = layout.all_reduce(torch.linalg.vector_norm(work.view(len(params), -1), dim=1).square_(), range(n))
        rms = squares.div_(math.prod(layout.shape)).sqrt_()
        work.div_((rms / group["clip_threshold"]).clamp_(min=1.0).view(-1, *[1] * n))

        exp_avg = self._read_exp_avg(states)
        exp_avg.lerp_(work, 1 - beta1)
        if factored:
            work.sub_(exp_avg).square_()
            self._average(res_row, layout, work, n - 1, beta3, eps2)
            self._average(res_col, layout, work, n - 2, beta3, eps2)
            torch.mul(self._row_factor(res_row, layout), res_col.rsqrt().unsqueeze(-2), out=work)  # 1/sqrt(res)

        targets = matrices([local(p) for p in params], shape)
        if group["weight_decay"]:
            torch._foreach_mul_(targets, 1 - group["weight_decay"] * group["lr"])
        if factored:  # p -= lr * exp_avg / sqrt(res), else p -= lr * exp_avg
            torch._foreach_addcmul_(targets, list(exp_avg.unbind(0)), list(work.unbind(0)), value=-group["lr"])
        else:
            torch._foreach_add_(targets, list(exp_avg.unbind(0)), alpha=-group["lr"])
        self._write_exp_avg(states, exp_avg)

    @staticmethod
    def _average(stat: torch.Tensor, layout: Layout, values: torch.Tensor, dim: int, beta: float, eps: float):
        """`stat` <- beta * stat + (1 - beta) * (mean of `values` over the parameter's `dim`, + eps)."""
        mean = layout.sum(values, (dim,)).div_(layout.shape[dim]).add_(eps)
        stat.mul_(beta).add_(mean, alpha=1 - beta)

    @staticmethod
    def _row_factor(row: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Adafactor's row factor of the rank-1 estimate of 1/sqrt(V): (row / its mean)^-1/2, as a column."""
        n = len(layout.shape)
        mean = layout.sum(row, (n - 2,)).div_(layout.shape[-2]).unsqueeze(-1)
        return (row / mean).rsqrt_().unsqueeze(-1)


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

    def _init_exp_avg(self, state: dict, zeros: torch.Tensor, layout: Layout) -> None:
        if len(layout.shape) < 2 or math.prod(layout.shape) < self.min_8bit_size:
            return super()._init_exp_avg(state, zeros, layout)
        codes, *scales = self._quantize(local(zeros))
        kept = tuple(range(len(layout.shape)))
        state["exp_avg_q"] = layout.wrap(codes, kept)
        for name, scale in zip(self._scale_names(), scales):
            state[name] = layout.wrap(scale, (*kept[:-1], None))

    def _read_exp_avg(self, states: list[dict]) -> torch.Tensor:
        if "exp_avg" in states[0]:
            return super()._read_exp_avg(states)
        codes, *scales = (stacked(states, name) for name in ("exp_avg_q", *self._scale_names()))
        if self.quantization == "minmax":
            return dequantize_minmax(codes, *scales, QUANT_BLOCKSIZE)
        out = self._workspace.buffer("exp_avg", codes.shape, torch.float32, codes.device)
        index = self._workspace.buffer("codes", codes.shape, torch.int32, codes.device)
        return dequantize(codes, *scales, dynamic_codebook(codes.device), QUANT_BLOCKSIZE, out=out, index=index)

    def _write_exp_avg(self, states: list[dict], exp_avg: torch.Tensor) -> None:
        """Quantise the updated first moment into the states (`exp_avg`'s memory is reused as work memory)."""
        if "exp_avg" in states[0]:
            return
        codes, *scales = (stacked(states, name) for name in ("exp_avg_q", *self._scale_names()))
        if self.quantization == "minmax":
            for target, value in zip((codes, *scales), quantize_minmax(exp_avg, QUANT_BLOCKSIZE)):
                target.copy_(value)
        else:
            quantize_into(exp_avg, dynamic_codebook(exp_avg.device), codes, *scales, QUANT_BLOCKSIZE)

    def _quantize(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.quantization == "minmax":
            return quantize_minmax(values, QUANT_BLOCKSIZE)
        return quantize(values, dynamic_codebook(values.device), QUANT_BLOCKSIZE)

    def _scale_names(self) -> tuple[str, ...]:
        return ("exp_avg_min", "exp_avg_max") if self.quantization == "minmax" else ("exp_avg_absmax",)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        key = self._scale_names()[0]
        for state in self.state.values():  # torch casts every state tensor to its parameter's dtype
            if "exp_avg_q" in state:
                if key not in state:
                    other = "minmax" if self.quantization == "dynamic" else "dynamic"
                    raise ValueError(
                        f"this optimizer state was saved with quantization={other!r}: set CAME8bit's quantization to it"
                    )
                state["exp_avg_q"] = state["exp_avg_q"].to(torch.uint8)
