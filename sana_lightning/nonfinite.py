"""The non-finite guard of training: stop before an update with a NaN/Inf loss or gradient norm, and never save
non-finite weights; clipping reuses the gradient norm it measures."""

from pathlib import Path

import torch
from torch.distributed.tensor import DTensor


class NonFiniteError(RuntimeError):
    """Training met a NaN/Inf loss, gradient norm or weight; nothing non-finite was stepped into or saved."""


def _finite(value: torch.Tensor) -> bool:
    local = value.to_local() if isinstance(value, DTensor) else value
    return bool(torch.isfinite(local).all())


class NonFiniteGuard:
    """LightningModule hooks for a module whose trained network is `self.transformer`, and that records its last
    batch's loss and sample keys in `self._last_step`."""

    def on_before_optimizer_step(self, optimizer) -> None:
        """Stop before the update when the loss or the gradient norm is NaN/Inf (the weights stay the last good)."""
        self._grad_norm = self._gradient_norm()
        norm = self._grad_norm.full_tensor() if isinstance(self._grad_norm, DTensor) else self._grad_norm
        self.log("train/grad_norm", norm.detach(), batch_size=1)
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling skips non-finite steps itself
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(norm)), all=True):
            last = getattr(self, "_last_step", {})
            loss, keys = last.get("loss", torch.tensor(float("nan"))), last.get("keys") or []
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            good = self._last_good_checkpoint()
            restart = (
                f"last good checkpoint: {good}; start a SanaFlowModule run from its weights with a lower learning "
                f"rate (--model.init_args.pretrained={good}) or check those samples"
                if good
                else "no checkpoint was written yet; lower the learning rate or check those samples"
            )
            raise NonFiniteError(
                f"non-finite training at step {self.global_step + 1}: loss {loss.item():.4g}, gradient norm "
                f"{norm.item():.4g} (batch: {shown or 'no keys'}); stopped before the update, nothing saved; {restart}"
            )

    def _gradient_norm(self) -> torch.Tensor:
        """The norm of the full gradient, also when the backbone is sharded."""
        model = self.trainer.model
        if hasattr(model, "clip_grad_norm_"):  # FSDPStrategy wraps the module in FullyShardedDataParallel
            return model.clip_grad_norm_(float("inf"))
        return torch.nn.utils.get_total_norm([p.grad for p in self.transformer.parameters() if p.grad is not None])

    def _last_good_checkpoint(self) -> str:
        paths = [
            path
            for callback in self.trainer.checkpoint_callbacks
            for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
            if path and Path(path).exists()
        ]
        paths += [self.trainer.ckpt_path] if self.trainer.ckpt_path else []
        return max(paths, key=lambda p: Path(p).stat().st_mtime) if paths else None

    def _check_finite_weights(self) -> None:
        bad = [name for name, value in self.state_dict().items() if value.is_floating_point() and not _finite(value)]
        if not self.trainer.strategy.reduce_boolean_decision(not bad, all=True):
            good = self._last_good_checkpoint() or "none"
            raise NonFiniteError(
                f"refusing to save a checkpoint at step {self.global_step}: non-finite weights ("
                f"{', '.join(bad[:3]) or 'on another rank'}); last good checkpoint: {good}"
            )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping over the (possibly sharded) backbone with the full gradient's norm (measured once, by the
        non-finite guard)."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"gradient_clip_algorithm={gradient_clip_algorithm!r} is not supported: use 'norm'")
        model = self.trainer.model
        if hasattr(model, "clip_grad_norm_"):  # FSDPStrategy wraps the module in FullyShardedDataParallel
            model.clip_grad_norm_(gradient_clip_val)
        else:
            grads = [p for p in self.transformer.parameters() if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(grads, gradient_clip_val, self._grad_norm)
