"""Each sampler piece against the reference scheduler classes or closed-form values."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from helios_serve.model_executor.sampling import guidance, pyramid
from helios_serve.model_executor.sampling.dmd import dmd_step, euler_step
from helios_serve.model_executor.sampling.schedules import (
    SamplerScheduleConfig,
    dynamic_shift_mu,
    pyramid_stage_schedule,
    single_stage_schedule,
    stage_tables,
)
from helios_serve.model_executor.sampling.unipc import UniPCState

MID = SamplerScheduleConfig(kind="unipc", stages=3)
DISTILLED = SamplerScheduleConfig(kind="dmd", stages=3, time_shift_type="linear")
BASE = SamplerScheduleConfig(kind="unipc", stages=1, stage_range=(0.0, 1.0))


def fake_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """A smooth stand-in for the model, so trajectories depend on the sample."""
    return torch.tanh(x * 0.7 + t / 1000.0) - 0.3 * x


def test_dynamic_shift_constants():
    assert dynamic_shift_mu(8640) == pytest.approx(1.91917, abs=1e-5)
    assert dynamic_shift_mu(2160) == pytest.approx(0.82229, abs=1e-5)
    assert dynamic_shift_mu(540) == pytest.approx(0.54807, abs=1e-5)


def test_published_timesteps():
    base = single_stage_schedule(BASE, 50, dynamic_shift_mu(8640)).timesteps
    assert base[0].item() == pytest.approx(999.853, abs=1e-3) and base[-1].item() == pytest.approx(121.995, abs=1e-3)
    mid0 = pyramid_stage_schedule(MID, 0, 20, dynamic_shift_mu(540)).timesteps
    assert mid0[0].item() == pytest.approx(998.852, abs=1e-3) and mid0[-1].item() == pytest.approx(743.953, abs=1e-3)
    dist = [pyramid_stage_schedule(DISTILLED, s, 2, mu).timesteps.tolist() for s, mu in enumerate((0.54807, 0.54807, 0.82229))]
    assert np.allclose(dist, [[998.534, 833.964], [742.605, 512.463], [385.147, 174.764]], atol=2e-3)
    amplified = pyramid_stage_schedule(DISTILLED, 2, 2, dynamic_shift_mu(2160), amplify=True).timesteps
    assert np.allclose(amplified.tolist(), [385.147, 274.575, 174.764, 84.216], atol=2e-3)
    alpha, beta = stage_tables(MID).renoise_coefficients(1, MID.gamma)
    assert (alpha, beta) == pytest.approx((0.600120, 0.692612), abs=1e-6)


@pytest.mark.parametrize("num_steps", [1, 2, 5, 20])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_unipc_matches_reference_scheduler(num_steps, stage):
    from diffusers import HeliosScheduler

    mu = dynamic_shift_mu(540 if stage < 2 else 2160)
    reference = HeliosScheduler(stages=3, use_dynamic_shifting=True)
    reference.set_timesteps(num_steps, stage, mu=mu)
    schedule = pyramid_stage_schedule(MID, stage, num_steps, mu)
    ours = UniPCState(schedule.sigmas)
    x_ref = x_ours = torch.randn(1, 4, 3, 6, 8, generator=torch.Generator().manual_seed(stage))
    for t in reference.timesteps:
        x_ref = reference.step(fake_velocity(x_ref, t.item()), t, x_ref, return_dict=False)[0]
        x_ours = ours.step(fake_velocity(x_ours, t.item()), x_ours)
        assert torch.equal(x_ours, x_ref)


def test_unipc_base_schedule_matches_reference():
    from diffusers import HeliosScheduler

    mu = dynamic_shift_mu(2160)
    reference = HeliosScheduler(stages=1, stage_range=[0, 1], use_dynamic_shifting=True)
    reference.set_timesteps(12, sigmas=np.linspace(0.999, 0.0, 13)[:-1], mu=mu)
    ours = UniPCState(single_stage_schedule(BASE, 12, mu).sigmas)
    x_ref = x_ours = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for t in reference.timesteps:
        x_ref = reference.step(fake_velocity(x_ref, t.item()), t, x_ref, return_dict=False)[0]
        x_ours = ours.step(fake_velocity(x_ours, t.item()), x_ours)
    assert torch.equal(x_ours, x_ref)


@pytest.mark.parametrize("amplify", [False, True])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_dmd_matches_reference_scheduler(stage, amplify):
    from diffusers import HeliosDMDScheduler

    mu = dynamic_shift_mu(540 if stage < 2 else 2160)
    reference = HeliosDMDScheduler(stages=3, use_dynamic_shifting=True, time_shift_type="linear")
    reference.set_timesteps(2, stage, mu=mu, is_amplify_first_chunk=amplify)
    schedule = pyramid_stage_schedule(DISTILLED, stage, 2, mu, amplify=amplify)
    start = torch.randn(1, 4, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    x_ref = x_ours = start
    for i, t in enumerate(reference.timesteps):
        v = fake_velocity(x_ref, t.item())
        x_ref = reference.step(
            v, t, x_ref, return_dict=False, cur_sampling_step=i, dmd_noisy_tensor=start,
            dmd_sigmas=reference.sigmas, dmd_timesteps=reference.timesteps, all_timesteps=reference.timesteps,
        )[0]
        x_ours = dmd_step(schedule, i, v, x_ours, start)
        assert torch.equal(x_ours, x_ref)


def test_euler_is_the_flow_ode_step():
    schedule = single_stage_schedule(BASE, 4, 1.0)
    x, v = torch.ones(3), torch.full((3,), 2.0)
    expected = 1 + (schedule.sigmas[1] - schedule.sigmas[0]).item() * 2
    assert torch.allclose(euler_step(schedule, 0, v, x), torch.full((3,), expected))


def test_guidance_closed_forms():
    cond = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    uncond = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.equal(guidance.cfg(cond, uncond, 5.0), uncond + 5 * (cond - uncond))
    # alpha* = <c,u>/|u|^2: sample 0 -> 1/1 = 1, sample 1 -> 2/4 = 0.5
    out = guidance.cfg_zero_star(cond, uncond, 5.0)
    alpha = torch.tensor([[1.0], [0.5]])
    assert torch.allclose(out, uncond * alpha + 5.0 * (cond - uncond * alpha), atol=1e-6)


def test_cfg_zero_star_matches_reference_projection():
    from diffusers.pipelines.helios.pipeline_helios_pyramid import optimized_scale

    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 16, 9, 4, 4, generator=g), torch.randn(2, 16, 9, 4, 4, generator=g)
    alpha = optimized_scale(cond.view(2, -1), uncond.view(2, -1)).view(2, 1, 1, 1, 1)
    assert torch.equal(guidance.cfg_zero_star(cond, uncond, 5.0), uncond * alpha + 5.0 * (cond - uncond * alpha))


def test_block_noise_matches_reference_and_its_law():
    from diffusers import HeliosPyramidPipeline

    fake_pipeline = types.SimpleNamespace(scheduler=types.SimpleNamespace(config=types.SimpleNamespace(gamma=0.3)))
    expected = HeliosPyramidPipeline.sample_block_noise(
        fake_pipeline, 2, 3, 4, 6, 8, (1, 2, 2), "cpu", torch.Generator().manual_seed(5)
    )
    ours = pyramid.block_noise((2, 3, 4, 6, 8), 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(ours, expected)
    # gamma = 1/3 (the released value): unit variance and (almost) zero sum inside every 2x2 block.
    noise = pyramid.block_noise((1, 16, 9, 64, 64), 1 / 3, torch.Generator().manual_seed(0))
    assert noise.var().item() == pytest.approx(1.0, abs=0.01)
    block_sums = noise.unfold(3, 2, 2).unfold(4, 2, 2).sum(dim=(-1, -2))
    # The covariance is singular along the block sum, so the fp32 factor L leaves a block sum of
    # z . (L^T 1) with std sigma = |L^T 1|, set by LAPACK's rounding (it differs between BLAS
    # builds). Cholesky's backward error (Higham, Thm 10.3: L L^T = C + dC, |dC| <= g5 |L||L^T|)
    # bounds it: sigma^2 <= 1^T C 1 + g5 1^T |L||L^T| 1, with g5 = 5u / (1 - 5u), u = 2^-24.
    factor = pyramid.block_noise_factor(1 / 3).double()
    ones = torch.ones(4, dtype=torch.float64)
    cov = torch.eye(4, dtype=torch.float64) * (1 + 1 / 3 + 1e-8) - 1 / 3
    g5 = 5 * 2.0**-24 / (1 - 5 * 2.0**-24)
    sigma = (factor.T @ ones).norm().item()
    assert sigma**2 <= (ones @ cov @ ones).abs().item() + g5 * (ones @ factor.abs() @ factor.abs().T @ ones).item()
    # 147,456 block sums all within 6 sigma (the chance of one beyond: 3e-4), plus fp32 rounding
    # of the 4-term products and sums (|z| < 6, |L| <= 1: below 1e-5).
    assert block_sums.abs().max().item() <= 6 * sigma + 1e-5


def test_pyramid_resizes():
    noise = torch.randn(1, 16, 9, 32, 48, generator=torch.Generator().manual_seed(0))
    small = pyramid.shrink_noise(noise, 3)
    assert small.shape == (1, 16, 9, 8, 12)
    assert small.std().item() == pytest.approx(1.0, abs=0.1)  # the x2 keeps unit variance
    up = pyramid.upsample_nearest(small)
    assert up.shape == (1, 16, 9, 16, 24) and torch.equal(up[..., ::2, ::2], small)
