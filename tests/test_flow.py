import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sana_lightning.flow import (
    FlowConfig,
    add_noise,
    caption_drop_mask,
    flow_loss,
    sample_sigmas,
    shift_sigmas,
    velocity_target,
)


def test_shift_matches_diffusers_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # before set_timesteps: all 1000 training sigmas
    unshifted = torch.arange(1000, 0, -1) / 1000
    torch.testing.assert_close(shift_sigmas(unshifted, 3.0), scheduler.sigmas, atol=1e-6, rtol=0)


def test_logit_normal_sigmas_have_the_configured_logit_moments():
    sigmas = sample_sigmas(
        200_000, FlowConfig(logit_mean=0.5, logit_std=0.8, shift=1.0), torch.Generator().manual_seed(0)
    )
    logits = torch.logit(sigmas.double())
    assert abs(logits.mean().item() - 0.5) < 0.01 and abs(logits.std().item() - 0.8) < 0.01


def test_shift_moves_noise_levels_towards_noise():
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    plain = sample_sigmas(10_000, FlowConfig(shift=1.0), generator())
    shifted = sample_sigmas(10_000, FlowConfig(shift=3.0), generator())
    assert (shifted >= plain).all() and shifted.mean() > plain.mean() + 0.15


def test_interpolation_endpoints_and_velocity():
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigmas = torch.tensor([0.0, 0.25, 1.0])
    xt = add_noise(x0, noise, sigmas)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], noise[2])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    # Walking back along the velocity from x_t by sigma recovers the clean sample exactly.
    torch.testing.assert_close(xt - sigmas.view(-1, 1, 1, 1) * velocity_target(x0, noise), x0)
    assert flow_loss(noise - x0, x0, noise).item() == 0.0
    assert abs(flow_loss(torch.zeros_like(x0), x0, noise).item() - (noise - x0).pow(2).mean().item()) < 1e-6


def test_caption_dropout_rate():
    mask = caption_drop_mask(100_000, 0.1, torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.1) < 0.005
