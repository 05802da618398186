"""Synthetic motion blur: trajectories, kernels, convolution."""
import math

import pytest
import torch

from dpir_fast.data import arc_kernel, blur, motion_blur, random_motion_kernel, random_trajectory, trajectory_kernel


def test_trajectory_has_its_length_and_starts_at_zero():
    path = random_trajectory(steps=500, length=20.0, generator=torch.Generator().manual_seed(0))
    assert path.shape == (500, 2) and torch.equal(path[0], torch.zeros(2, dtype=torch.float64))
    assert torch.isclose(torch.linalg.norm(path.diff(dim=0), dim=1).sum(), torch.tensor(20.0, dtype=torch.float64))


def _extent(path: torch.Tensor) -> float:
    return float((path.max(0).values - path.min(0).values).max())


def test_trajectory_shape_does_not_depend_on_its_step_count():
    # Per-step jitter that ignored the step count made 2000-step paths of 8-28 px curl into 3-5 px balls
    for steps in (200, 2000):
        g = torch.Generator().manual_seed(5)
        spans = torch.tensor([_extent(random_trajectory(steps, 20.0, g)) / 20.0 for _ in range(60)])
        assert 0.6 < float(spans.median()) < 0.85, steps


def test_kernels_span_the_blur_sizes_of_real_camera_shake():
    g = torch.Generator().manual_seed(0)
    sizes = []
    for _ in range(100):
        k = random_motion_kernel(31, g)
        ys, xs = torch.nonzero(k > 1e-3 * k.max(), as_tuple=True)
        sizes.append(max(int(xs.max() - xs.min()), int(ys.max() - ys.min())) + 1)
    sizes = torch.tensor(sizes, dtype=torch.float32)
    assert float(sizes.quantile(0.1)) <= 6 and 9 <= float(sizes.median()) <= 15 and float(sizes.quantile(0.9)) >= 19


def test_kernels_are_normalised_seeded_and_centred():
    a = random_motion_kernel(21, torch.Generator().manual_seed(1))
    b = random_motion_kernel(21, torch.Generator().manual_seed(1))
    c = random_motion_kernel(21, torch.Generator().manual_seed(2))
    assert a.shape == (21, 21) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= 0).all() and torch.isclose(a.sum(), torch.tensor(1.0))
    ys, xs = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    assert abs(float((a * xs).sum()) - 10) < 1.0 and abs(float((a * ys).sum()) - 10) < 1.0
    line = torch.stack([torch.linspace(0, 4, 401, dtype=torch.float64), torch.zeros(401, dtype=torch.float64)], 1)
    k = trajectory_kernel(line, 7)  # a horizontal 4-pixel streak through the centre row
    assert torch.isclose(k[3].sum(), torch.tensor(1.0)) and (k[3, 1:6] > 0.1).all()


def test_blur_is_a_convolution():
    kernel = random_motion_kernel(9, torch.Generator().manual_seed(3))
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    torch.testing.assert_close(blur(impulse, kernel, padding="constant")[0, 0, 3:12, 3:12], kernel)
    flat = torch.full((2, 3, 10, 12), 0.4)
    torch.testing.assert_close(blur(flat, kernel), flat)
    x = torch.rand(3, 10, 12)
    assert blur(x, kernel).shape == x.shape
    with pytest.raises(ValueError, match="does not fit"):
        blur(torch.rand(2, 3, 8, 8), torch.rand(3, 5, 5))


def test_motion_blur_batch():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 16, 16, generator=g)
    out, kernels = motion_blur(x, size=7, noise_sigma=0.01, generator=g)
    assert out.shape == x.shape and kernels.shape == (2, 7, 7)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(blur(x[1:], kernels[1]), blur(x, kernels)[1:])


@pytest.mark.parametrize("length,angle", [(9, 0.0), (15, 0.7), (21, 2.0)])
def test_straight_line_kernels_span_their_length_along_their_angle(length, angle):
    k = arc_kernel(length, 31, angle)
    assert k.shape == (31, 31) and (k >= 0).all() and torch.isclose(k.sum(), torch.tensor(1.0))
    ys, xs = torch.meshgrid(torch.arange(31.0), torch.arange(31.0), indexing="ij")
    along = (xs - 15) * math.cos(angle) + (ys - 15) * math.sin(angle)
    across = -(xs - 15) * math.sin(angle) + (ys - 15) * math.cos(angle)
    support = k > 1e-4
    assert abs(float(along[support].max() - along[support].min()) - length) <= 2.5
    assert float(across[support].abs().max()) <= 1.5   # a line, one or two pixels thick
    assert abs(float((k * along).sum())) < 0.5          # centred


def test_arc_kernels_curve_and_are_centred():
    straight, bent = arc_kernel(19, 31, 0.3), arc_kernel(19, 31, 0.3, turn=2.5)
    assert torch.isclose(bent.sum(), torch.tensor(1.0)) and not torch.allclose(straight, bent)
    ys, xs = torch.meshgrid(torch.arange(31.0), torch.arange(31.0), indexing="ij")
    assert abs(float((bent * xs).sum()) - 15) < 1.0 and abs(float((bent * ys).sum()) - 15) < 1.0
    assert torch.equal(arc_kernel(19, 31, 0.3, turn=1e-12), straight)
