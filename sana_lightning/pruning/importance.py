"""Block importance and depth pruning of a `SanaTransformer2DModel` (SANA 1.5, section 2.2), as pure functions.

Importance is measured on calibration data (clean latents + caption embeddings) noised to each calibration noise
level with fixed noise, side by side:
- `cosine`: ShortGPT's Block Influence, BI = 1 - mean cos(x_in, x_out) over tokens, samples and noise levels;
- `angular`: mean arccos(cos(x_in, x_out)) / pi;
- `loss_delta`: increase of the flow-matching loss when that block alone is skipped.
Each metric is also kept per noise level (blocks may matter at some noise levels only).
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import SanaTransformer2DModel

from sana_lightning.blocks import keep_blocks
from sana_lightning.flow import add_noise, flow_loss, timesteps_from_sigmas, velocity
from sana_lightning.sampling import sampler_sigmas

METRICS = ("cosine", "angular", "loss_delta")


@dataclass
class CalibrationBatch:
    """Clean latents and caption embeddings to measure importance on, with the fixed noise to add to them."""

    latents: torch.Tensor
    embeds: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor


@dataclass
class Importance:
    """Per-block importance: `per_sigma[metric]` is `[num_blocks, num_sigmas]`, `scores[metric]` its mean."""

    sigmas: list[float]
    per_sigma: dict[str, torch.Tensor]

    @property
    def scores(self) -> dict[str, torch.Tensor]:
        return {metric: values.mean(dim=1) for metric, values in self.per_sigma.items()}

    def to_dict(self) -> dict:
        return {
            "sigmas": self.sigmas,
            "scores": {m: v.tolist() for m, v in self.scores.items()},
            "per_sigma": {m: v.tolist() for m, v in self.per_sigma.items()},
        }


@torch.no_grad()
def calibration_batch(module, batch: dict, seed: int = 0) -> CalibrationBatch:
    """Fixed inputs for importance: `module.encode_batch`'s clean latents and embeddings of `batch` (raw or
    precomputed shards, no caption dropout) on the module's device, with seeded noise."""
    batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    x0, embeds, mask = module.encode_batch(batch, torch.Generator().manual_seed(seed), caption_dropout=0.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0)
    return CalibrationBatch(x0, embeds, mask, noise)


def module_importance(module, batch: dict, num_sigmas: int = 10, loss_delta: bool = True, seed: int = 0) -> Importance:
    """Importance of a flow module's blocks on `batch`, at the `num_sigmas` noise levels its sampler visits."""
    sigmas = sampler_sigmas(module.sampler, num_sigmas)
    return block_importance(module.transformer, calibration_batch(module, batch, seed), sigmas, loss_delta)


def _loss(transformer, batch: CalibrationBatch, noisy: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    prediction = velocity(transformer, noisy, timesteps_from_sigmas(sigmas), batch.embeds, batch.mask)
    return flow_loss(prediction, batch.latents, batch.noise)


@contextmanager
def _skipping(block: torch.nn.Module):
    """Make `block` return its input unchanged (the residual stream passes through)."""
    handle = block.register_forward_hook(lambda module, args, output: args[0])
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def block_importance(
    transformer: SanaTransformer2DModel, batch: CalibrationBatch, sigmas: list[float], loss_delta: bool = True
) -> Importance:
    """All importance metrics of every block at every noise level in `sigmas`."""
    blocks = transformer.transformer_blocks
    cosine = torch.zeros(len(blocks), len(sigmas))
    angular = torch.zeros(len(blocks), len(sigmas))
    deltas = torch.zeros(len(blocks), len(sigmas))
    current: dict[int, torch.Tensor] = {}

    def record(index, module, args, output):
        # float64: arccos is ill-conditioned near cos = 1, where unimportant blocks live
        cos = torch.nn.functional.cosine_similarity(args[0].double(), output.double(), dim=-1).clamp(-1, 1)
        current[index] = cos

    handles = [block.register_forward_hook(lambda m, a, o, i=i: record(i, m, a, o)) for i, block in enumerate(blocks)]
    try:
        for j, sigma in enumerate(sigmas):
            sigma_batch = torch.full((len(batch.latents),), sigma)
            noisy = add_noise(batch.latents, batch.noise, sigma_batch)
            base = _loss(transformer, batch, noisy, sigma_batch)
            for i, cos in current.items():
                cosine[i, j] = 1 - cos.mean()
                angular[i, j] = (torch.arccos(cos) / torch.pi).mean()
            if loss_delta:
                for i, block in enumerate(blocks):
                    with _skipping(block):
                        skipped = _loss(transformer, batch, noisy, sigma_batch)
                    deltas[i, j] = skipped - base
    finally:
        for handle in handles:
            handle.remove()
    per_sigma = {"cosine": cosine, "angular": angular} | ({"loss_delta": deltas} if loss_delta else {})
    return Importance([float(s) for s in sigmas], per_sigma)


def blocks_to_remove(scores: torch.Tensor, target_depth: int, protect_ends: bool = False) -> list[int]:
    """Indices of the least important blocks to drop so that `target_depth` remain (ties: later block first)."""
    depth = len(scores)
    protected = {0, depth - 1} if protect_ends else set()
    if not 1 <= target_depth <= depth:
        raise ValueError(f"target depth {target_depth} is impossible for a {depth}-block model: use 1..{depth}")
    if depth - target_depth > depth - len(protected):
        raise ValueError(f"cannot remove {depth - target_depth} of {depth} blocks while protecting the first and last")
    candidates = sorted((i for i in range(depth) if i not in protected), key=lambda i: (scores[i].item(), -i))
    return sorted(candidates[: depth - target_depth])


def select_blocks(
    depth: int,
    target_depth: int,
    criterion: str,
    importance: Importance | None = None,
    protect_ends: bool = False,
    seed: int = 0,
) -> list[int]:
    """Blocks to remove by an importance metric (least important first), or the baselines `random` / `last`."""
    if criterion in METRICS:
        if importance is None:
            raise ValueError(f"criterion '{criterion}' needs the block importance")
        return blocks_to_remove(importance.scores[criterion], target_depth, protect_ends)
    if criterion == "random":
        scores = torch.rand(depth, generator=torch.Generator().manual_seed(seed))
        return blocks_to_remove(scores, target_depth, protect_ends)
    if criterion == "last":
        return blocks_to_remove(-torch.arange(depth, dtype=torch.float), target_depth, protect_ends)
    raise ValueError(f"unknown pruning criterion '{criterion}': use one of {', '.join((*METRICS, 'random', 'last'))}")


def prune(model: SanaTransformer2DModel, remove: list[int]) -> SanaTransformer2DModel:
    """A copy of `model` without the blocks `remove`."""
    depth = len(model.transformer_blocks)
    if any(not 0 <= i < depth for i in remove):
        raise ValueError(f"block indices {remove} are out of range for a {depth}-block model")
    return keep_blocks(model, [i for i in range(depth) if i not in set(remove)])
