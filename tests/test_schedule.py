import math

import numpy as np
import pytest

from dpir_fast.schedule import Schedule, ddim_timesteps


def compose_steps(schedule: Schedule, t: int, k: int):
    """(A, B, S) of k ancestral steps from t, composed one step at a time (x0 held fixed)."""
    A, B, S2 = 0.0, 1.0, 0.0
    for s in range(t, t - k, -1):
        gamma, c, sigma = schedule.step_coefficients(s)
        A, B, S2 = gamma + c * A, c * B, c * c * S2 + sigma * sigma
    return A, B, math.sqrt(S2)


def test_linear_tables_are_float64_and_one_based():
    s = Schedule.linear()
    assert s.T == 1000
    assert s.beta.dtype == s.alpha_bar.dtype == np.float64
    assert s.beta[0] == 0.0 and s.alpha_bar[0] == 1.0
    assert s.beta[1] == pytest.approx(1e-4) and s.beta[1000] == pytest.approx(2e-2)
    np.testing.assert_allclose(s.alpha_bar[7], np.prod(1 - s.beta[1:8]), rtol=1e-15)


def test_reference_values_from_design():
    s = Schedule.linear()
    np.testing.assert_allclose(s.jump_coefficients(1000, 995), (0.99965041, 4.4424e-6, 0.0288391), rtol=2e-5)
    np.testing.assert_allclose(s.jump_coefficients(1000, 750), (0.72391088, 0.00417650, 0.69100525), rtol=2e-6)
    assert round(s.sigma_tilde(251) * 255, 2) == 244.30


@pytest.mark.parametrize("variance", ["beta", "posterior"])
@pytest.mark.parametrize("t,k", [(1000, 995), (1000, 750), (1000, 1), (1000, 1000), (500, 37), (2, 2),
                                 (1, 1), (731, 730), (250, 50), (1000, 0)])
def test_jump_equals_composed_single_steps(variance, t, k):
    s = Schedule.linear(variance=variance)
    jump = s.jump_coefficients(t, k)
    composed = compose_steps(s, t, k)
    np.testing.assert_allclose(jump, composed, rtol=1e-11, atol=1e-15)


def test_jump_on_a_user_schedule():
    rng = np.random.default_rng(0)
    s = Schedule.from_betas(rng.uniform(1e-3, 0.3, size=40), variance="posterior")
    for t, k in [(40, 39), (40, 17), (13, 13)]:
        np.testing.assert_allclose(s.jump_coefficients(t, k), compose_steps(s, t, k), rtol=1e-11, atol=1e-15)


def test_posterior_variance_differs_from_beta_only_in_noise():
    a, b = Schedule.linear(variance="beta"), Schedule.linear(variance="posterior")
    assert a.jump_coefficients(1000, 995)[:2] == b.jump_coefficients(1000, 995)[:2]
    assert a.jump_coefficients(1000, 995)[2] > b.jump_coefficients(1000, 995)[2]
    assert b.reverse_variance(1) == 0.0


def test_ddim_with_eta_one_and_unit_stride_is_the_posterior_step():
    s = Schedule.linear(variance="posterior")
    for t in (2, 10, 250, 1000):
        np.testing.assert_allclose(s.ddim_coefficients(t, t - 1, eta=1.0), s.step_coefficients(t), rtol=1e-10)


def test_ddim_eta_zero_matches_its_epsilon_form():
    s = Schedule.linear()
    t, u = 250, 245
    a, b, sigma = s.ddim_coefficients(t, u)
    x0, xt = 0.3, -1.7
    ab_t, ab_u = s.alpha_bar[t], s.alpha_bar[u]
    eps = (xt - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    assert sigma == 0.0
    assert a * x0 + b * xt == pytest.approx(math.sqrt(ab_u) * x0 + math.sqrt(1 - ab_u) * eps, rel=1e-12)
    assert s.ddim_coefficients(5, 0) == pytest.approx((1.0, 0.0, 0.0))


def test_ddim_timesteps_follow_the_list():
    assert ddim_timesteps(250, 50) == list(range(250, 0, -5))
    assert ddim_timesteps(5, 5) == [5, 4, 3, 2, 1]
    steps = ddim_timesteps(250, 33)
    assert len(steps) == 33 and len(set(steps)) == 33 and steps[0] == 250 and steps[-1] > 0
    with pytest.raises(ValueError, match="1..250"):
        ddim_timesteps(250, 251)


def test_bad_schedules_and_timesteps_are_rejected():
    with pytest.raises(ValueError, match="variance"):
        Schedule.linear(variance="cosine")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Schedule.from_betas([0.1, 1.5])
    s = Schedule.linear(T=10)
    with pytest.raises(ValueError, match="outside"):
        s.step_coefficients(11)
    with pytest.raises(ValueError, match="0..10"):
        s.jump_coefficients(10, 11)
    assert Schedule.from_config(s.config()).jump_coefficients(10, 4) == s.jump_coefficients(10, 4)
