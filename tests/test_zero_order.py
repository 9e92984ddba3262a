"""Zero-order search: neighbours stay standard normal noise, the search climbs the judge, budget n is a prefix."""

import numpy as np
import pytest
import torch
from PIL import Image

from sana_lightning.inference_scaling.judges import PairJudge
from sana_lightning.inference_scaling.tournament import Verdict
from sana_lightning.inference_scaling.zero_order import perturb, zero_order_search
from sana_lightning.module import SanaFlowModule
from sana_lightning.sampling import initial_noise


def test_neighbours_are_standard_normal_noise_at_the_asked_similarity():
    pivot = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    neighbour = perturb(pivot, 0.9, torch.Generator().manual_seed(2))
    assert neighbour.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.nn.functional.cosine_similarity(pivot, neighbour, dim=0).item() == pytest.approx(0.9, abs=0.005)
    with pytest.raises(ValueError, match="not in"):
        perturb(pivot, 1.0, torch.Generator())


def _brightness_images(prompts, noise):
    """An image per noise whose grey level is the noise's first entry (the search's black box)."""
    levels = (128 + 40 * noise.flatten(1)[:, 0]).clamp(0, 255).numpy().astype(np.uint8)
    return [Image.new("RGB", (4, 4), (int(v),) * 3) for v in levels]


class _WantsGrey(PairJudge):
    """Prefers images whose grey level is near the prompt's number."""

    def judge_pairs(self, pairs):
        closeness = [1 - abs(int(np.asarray(image)[0, 0, 0]) - int(prompt)) / 255 for prompt, image in pairs]
        return [Verdict(c > 0.9, c, 1 - c) for c in closeness]


def test_search_climbs_the_judge_and_budget_n_is_a_prefix_of_a_longer_search():
    prompts = ["250", "10", "128"]
    noise = initial_noise(3, 1, 4, [0, 1, 2])
    history = zero_order_search(prompts, noise, _brightness_images, _WantsGrey(), evaluations=17, neighbors=4, seed=3)
    for prompt, steps in zip(prompts, history):
        assert [s.evaluations for s in steps] == list(range(1, 18))
        distance = [abs(int(np.asarray(s.image)[0, 0, 0]) - int(prompt)) for s in steps]
        assert distance == sorted(distance, reverse=True)  # never worse than the best so far
    far = [abs(int(np.asarray(h[0].image)[0, 0, 0]) - int(p)) for p, h in zip(prompts, history)]
    near = [abs(int(np.asarray(h[-1].image)[0, 0, 0]) - int(p)) for p, h in zip(prompts, history)]
    assert sum(near) < 0.5 * sum(far)
    shorter = zero_order_search(prompts, noise, _brightness_images, _WantsGrey(), evaluations=7, neighbors=4, seed=3)
    for long, short in zip(history, shorter):
        assert [s.verdict for s in short] == [s.verdict for s in long[:7]]


def test_generate_from_noise_is_generate_from_the_seeds_noise(tiny_checkpoint):
    module = SanaFlowModule.from_checkpoint(str(tiny_checkpoint))
    module.sampler.steps = 2
    prompts = ["a photo of a red circle", "a photo of two squares"]
    noise = initial_noise(2, module.autoencoder.latent_channels, module.latent_size, [5, 9])
    torch.testing.assert_close(module.generate(prompts, [5, 9]), module.generate(prompts, noise=noise))
    with pytest.raises(ValueError, match="1 noise tensors for 2 prompts"):
        module.generate(prompts, noise=noise[:1])
