import math

import pytest
import torch

from dpir_fast.reference.noise import draw_noise
from dpir_fast.reference.sampler import (ancestral_step_ref, ddim_step_ref, denoiser_input_ref, dpir_sample_ref,
                                         jump_ref)
from dpir_fast.schedule import Schedule

SCHEDULE = Schedule.linear()


def sequential_chain(x0, schedule, tau, seed):
    """x_τ by T − τ single ancestral steps from x_T ~ N(0, I), x0 held fixed, with torch's own RNG."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for t in range(schedule.T, tau, -1):
        gamma, c, sigma = schedule.step_coefficients(t)
        x = gamma * x0 + c * x + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x


@pytest.mark.parametrize("variance", ["beta", "posterior"])
@pytest.mark.parametrize("tau", [5, 250])
def test_jump_has_the_law_of_the_sequential_chain(variance, tau):
    """Monte Carlo: mean and variance of the jump and of T − τ steps agree within sampling error."""
    schedule = Schedule.linear(variance=variance)
    x0 = torch.linspace(0, 1, 3 * 128 * 128, dtype=torch.float64).reshape(1, 3, 128, 128)
    jumped = jump_ref(x0, schedule, tau, [11]).double()
    chained = sequential_chain(x0, schedule, tau, seed=12)
    A, B, S = schedule.jump_coefficients(schedule.T, schedule.T - tau)
    var = B * B + S * S
    n = x0.numel()
    for sample in (jumped, chained):
        resid = (sample - A * x0).flatten().double()
        assert abs(resid.mean()) < 5 * math.sqrt(var / n)
        assert abs(resid.var() / var - 1) < 5 * math.sqrt(2 / n)
    # the two samples against each other (not only against the formula)
    diff_mean = (jumped - chained).mean().double()
    assert abs(diff_mean) < 5 * math.sqrt(2 * var / n)


def test_forward_start_is_q_xt_given_x0():
    x_ir = torch.full((1, 3, 64, 64), 0.25)
    x = jump_ref(x_ir, SCHEDULE, 250, [3], start="forward")
    a, s = math.sqrt(SCHEDULE.alpha_bar[250]), math.sqrt(1 - SCHEDULE.alpha_bar[250])
    z = draw_noise([3], 0, x_ir.shape)
    torch.testing.assert_close(x, a * x_ir + s * z)
    with pytest.raises(ValueError, match="start"):
        jump_ref(x_ir, SCHEDULE, 5, [0], start="sdedit")


def test_single_steps_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.rand(2, 3, 9, 7, generator=g), torch.randn(2, 3, 9, 7, generator=g)
    gamma, c, sigma = SCHEDULE.step_coefficients(40)
    expected = gamma * x0 + c * xt + sigma * draw_noise([4, 9], 40, x0.shape)
    torch.testing.assert_close(ancestral_step_ref(x0, xt, 40, SCHEDULE, [4, 9]), expected)
    assert torch.equal(ancestral_step_ref(x0, xt, 1, SCHEDULE, [4, 9]), x0)
    a, b, _ = SCHEDULE.ddim_coefficients(40, 35)
    torch.testing.assert_close(ddim_step_ref(x0, xt, 40, 35, SCHEDULE, [4, 9]), a * x0 + b * xt)
    torch.testing.assert_close(ddim_step_ref(x0, xt, 5, 0, SCHEDULE, [4, 9]), x0)


def test_denoiser_input_is_scaled_state_and_noise_level_map():
    xt = torch.randn(2, 3, 5, 6)
    inp = denoiser_input_ref(xt, 100, SCHEDULE, dtype=torch.bfloat16)
    assert inp.shape == (2, 4, 5, 6) and inp.dtype == torch.bfloat16
    torch.testing.assert_close(inp[:, :3].float(), xt / math.sqrt(SCHEDULE.alpha_bar[100]), rtol=8e-3, atol=0)
    assert torch.all(inp[:, 3].float() == torch.tensor(SCHEDULE.sigma_tilde(100)).bfloat16().float())


class Counter:
    def __init__(self):
        self.calls = []

    def denoise(self, inp):
        self.calls.append(inp.shape)
        return inp[:, :3] * 0.5

    def fuse(self, x_ir, x_den, t):
        return 0.5 * (x_ir + x_den)


@pytest.mark.parametrize("tail,steps,expected", [("ancestral", None, 5), ("ddim", 50, 50), ("ddim", None, 250)])
def test_number_of_evaluations(tail, steps, expected):
    tau = 5 if tail == "ancestral" else 250
    c = Counter()
    out = dpir_sample_ref(torch.rand(1, 3, 4, 4), c.denoise, c.fuse, SCHEDULE, tau, [0], tail, steps)
    assert len(c.calls) == expected and c.calls[0] == (1, 4, 4, 4)
    assert out.shape == (1, 3, 4, 4) and out.dtype == torch.float32


def test_unaccelerated_chain_visits_every_step():
    schedule = Schedule.linear(T=30)
    c = Counter()
    dpir_sample_ref(torch.rand(1, 3, 4, 4), c.denoise, c.fuse, schedule, schedule.T, [0])
    assert len(c.calls) == 30   # NFE = T + 1 with the IR net


def test_a_tile_draws_the_whole_images_noise():
    """With pixel-wise networks, sampling a crop in place equals cropping the whole-image result."""
    c = Counter()
    x_ir = torch.rand(2, 3, 21, 30)
    whole = dpir_sample_ref(x_ir, c.denoise, c.fuse, SCHEDULE, 250, [1, 2], "ddim", 10, eta=0.5)
    tile = dpir_sample_ref(x_ir[:, :, 5:16, 12:30], c.denoise, c.fuse, SCHEDULE, 250, [1, 2], "ddim", 10,
                           eta=0.5, full_size=(21, 30), origin=(5, 12))
    torch.testing.assert_close(tile, whole[:, :, 5:16, 12:30], rtol=0, atol=0)


def test_perfect_fusion_recovers_x0():
    x0 = torch.rand(1, 3, 8, 8)
    out = dpir_sample_ref(x0 + 0.1, lambda inp: inp[:, :3], lambda a, b, t: x0, SCHEDULE, 5, [0])
    assert torch.equal(out, x0)
    with pytest.raises(ValueError, match="tau"):
        dpir_sample_ref(x0, lambda inp: inp[:, :3], lambda a, b, t: x0, SCHEDULE, 0, [0])
