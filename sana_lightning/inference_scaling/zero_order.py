"""Zero-order search over the initial noise: perturb the best noise so far, keep what the judge prefers.

The verifier-guided local search of "Inference-time scaling for diffusion models beyond scaling denoising steps"
(Ma et al., 2025; tt-scale-flux's "zero-order" search), run with the same judges and the same number of function
evaluations (generated and judged images) as best-of-N: one pivot, then rounds of `neighbors` perturbations of the
pivot; the round's best that the judge prefers to the pivot (`tournament.beats`) becomes the next pivot.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from sana_lightning.inference_scaling.judges import Judge
from sana_lightning.inference_scaling.tournament import Verdict, beats


@dataclass
class SearchStep:
    """The best image and verdict of one prompt after `evaluations` generated and judged images."""

    evaluations: int
    image: Image.Image
    verdict: Verdict


def perturb(pivot: torch.Tensor, similarity: float, generator: torch.Generator) -> torch.Tensor:
    """A neighbour `a * pivot + sqrt(1 - a^2) * eps` with `a = similarity`: still standard normal noise, whose
    cosine to the pivot is about `similarity`."""
    if not 0.0 <= similarity < 1.0:
        raise ValueError(f"similarity {similarity} is not in [0, 1): 0 draws fresh noise, near 1 barely moves")
    eps = torch.randn(pivot.shape, generator=generator, dtype=pivot.dtype).to(pivot.device)
    return similarity * pivot + math.sqrt(1 - similarity**2) * eps


def zero_order_search(
    prompts: list[str],
    noise: torch.Tensor,
    generate: Callable[[list[str], torch.Tensor], list[Image.Image]],
    judge: Judge,
    evaluations: int,
    neighbors: int = 4,
    similarity: float = 0.9,
    seed: int = 0,
) -> list[list[SearchStep]]:
    """Search every prompt's noise at once (`noise[i]` is prompt i's first pivot; each round is one `generate` of
    `len(prompts) x neighbors` images and one `judge_pairs`). Returns, per prompt, the best so far after each of
    the `evaluations` images (entry n - 1: what a search with budget n returns, since the search only looks back)."""
    if evaluations < 1 or neighbors < 1:
        raise ValueError(f"evaluations {evaluations} and neighbors {neighbors} must be at least 1")
    if len(noise) != len(prompts):
        raise ValueError(f"{len(noise)} noise tensors for {len(prompts)} prompts: give one a prompt")
    generator = torch.Generator().manual_seed(seed)
    pivots = noise.clone()
    images = generate(prompts, pivots)
    verdicts = judge.judge_pairs(list(zip(prompts, images)))
    current = list(zip(images, verdicts))
    best = [[SearchStep(1, image, verdict)] for image, verdict in current]
    done = 1
    while done < evaluations:
        width = min(neighbors, evaluations - done)
        # Every round draws all `neighbors` (a shorter last round uses the first ones): budget n is a prefix.
        drawn = [[perturb(pivot, similarity, generator) for _ in range(neighbors)] for pivot in pivots]
        candidates = torch.stack([neighbour for own in drawn for neighbour in own[:width]])
        repeated = [prompt for prompt in prompts for _ in range(width)]
        images = generate(repeated, candidates)
        verdicts = judge.judge_pairs(list(zip(repeated, images)))
        for index, history in enumerate(best):
            for k in range(width):
                flat = index * width + k
                if not beats(current[index][1], verdicts[flat]):  # strictly better than the best so far
                    current[index] = (images[flat], verdicts[flat])
                    pivots[index] = candidates[flat]
                history.append(SearchStep(done + k + 1, *current[index]))
        done += width
    return best
