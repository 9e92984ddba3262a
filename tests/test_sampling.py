from types import SimpleNamespace

import pytest
import torch

from sana_lightning.presets import build_transformer
from sana_lightning.sampling import SamplerConfig, denoise, initial_noise


class PointMassVelocity(torch.nn.Module):
    """The exact flow velocity when all data is one point x0: v(x, sigma) = (x - x0) / sigma."""

    config = SimpleNamespace(timestep_scale=1.0)

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target
        self.calls = 0

    def forward(self, x, encoder_hidden_states, encoder_attention_mask, timestep):
        self.calls += 1
        sigma = (timestep / 1000).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - self.target) / sigma)


# DPM-Solver hands the model integer timesteps (sigma rounded to 1e-3), hence its looser tolerance.
@pytest.mark.parametrize("solver, atol", [("flow_euler", 1e-4), ("flow_dpm_solver", 5e-3)])
def test_solvers_integrate_the_exact_flow_to_the_data_point(solver, atol):
    target = torch.randn(1, 3, 4, 4)
    model = PointMassVelocity(target)
    embeds, mask = torch.zeros(2, 1, 8), torch.ones(2, 1)
    config = SamplerConfig(solver=solver, steps=6, guidance_scale=1.0, shift=3.0)
    out = denoise(model, torch.randn(2, 3, 4, 4), embeds, mask, embeds[:1], mask[:1], config)
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1), atol=atol, rtol=0)
    assert model.calls == 6  # no guidance: one pass per step


def test_guidance_doubles_the_batch_and_combines_predictions():
    model = PointMassVelocity(torch.zeros(1, 3, 4, 4))
    embeds, mask = torch.zeros(2, 1, 8), torch.ones(2, 1)
    config = SamplerConfig(steps=3, guidance_scale=4.5, shift=1.0)
    out = denoise(model, torch.randn(2, 3, 4, 4), embeds, mask, embeds[:1], mask[:1], config)
    # Both branches predict the same velocity, so guidance must leave it unchanged.
    torch.testing.assert_close(out, torch.zeros(2, 3, 4, 4), atol=1e-4, rtol=0)


def test_noise_per_seed_is_independent_of_batch_composition():
    together = initial_noise(3, 3, 8, [5, 6, 7])
    torch.testing.assert_close(together[1], initial_noise(1, 3, 8, [6])[0])
    torch.testing.assert_close(initial_noise(3, 3, 8, 5), together)


def test_real_transformer_sampling_is_seeded():
    transformer = build_transformer("tiny", caption_channels=8).eval()
    embeds, mask = torch.randn(2, 4, 8), torch.ones(2, 4)
    config = SamplerConfig(solver="flow_dpm_solver", steps=4)
    a = denoise(transformer, initial_noise(2, 3, 16, 0), embeds, mask, embeds[:1], mask[:1], config)
    b = denoise(transformer, initial_noise(2, 3, 16, 0), embeds, mask, embeds[:1], mask[:1], config)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        denoise(None, torch.zeros(1), None, None, None, None, SamplerConfig(solver="heun"))
