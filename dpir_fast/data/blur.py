"""Synthetic camera-shake blur: random motion trajectories, their kernels, and blurring.

Trajectories follow the model of Boracchi & Foi ("Modeling the performance of image restoration from
motion blur", TIP 2012), the one DeblurGAN generates its training kernels with: a 2-D random walk whose
velocity has inertia, a pull back to the origin (centripetal), Gaussian jitter and rare abrupt shakes,
renormalised to a fixed speed so the path has a set length. The kernel is the path's occupancy
(bilinear splatting of densely sampled positions), centred on its centroid and normalised to sum 1.

Unlike the original, whose per-step jitter, pull and shake probability make a path of 2000 steps curl into a
ball a few pixels wide whatever its length, the walk here is set per twentieth of the path (SHAPE_STEPS) and
scaled to the step count, so its shape depends on its length and random parameters only: a 31×31 kernel spans
from nearly straight streaks to tight scribbles, 5–22 px across (10th–90th percentile; lengths from 1 px).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


SHAPE_STEPS = 20  # the walk's jitter, pull to the origin and shake rate are those of a path of this many steps


def random_trajectory(steps: int = 2000, length: float = 30.0, generator: torch.Generator | None = None,
                      anxiety: float | None = None) -> torch.Tensor:
    """A camera-shake path [steps, 2] (x, y in pixels), starting at 0, of total length ``length``.

    ``anxiety`` (0..1, default U[0, 0.1]) scales the jitter and the abrupt shakes. The path's shape does not
    depend on ``steps`` (only how finely it is sampled): per step, the jitter's variance, the pull and the
    shake probability are SHAPE_STEPS / (steps - 1) of a reference step's, and the pull is relative to ``length``.
    """
    def rand() -> float:
        return float(torch.rand(1, generator=generator, dtype=torch.float64))

    anxiety = 0.1 * rand() if anxiety is None else anxiety
    centripetal, big_shake, jitter = 0.7 * rand(), 0.2 * rand(), 10.0 * rand()
    step = length / (steps - 1)
    share = SHAPE_STEPS / (steps - 1)
    angle = 2 * math.pi * rand()
    v = complex(math.cos(angle), math.sin(angle)) * step
    z = torch.randn(steps - 1, 2, generator=generator, dtype=torch.float64).tolist()
    u = torch.rand(steps - 1, 2, generator=generator, dtype=torch.float64).tolist()
    path = [0j]
    for t in range(steps - 1):
        shake = 0j
        if u[t][0] < big_shake * anxiety * share:  # abrupt turn, roughly backwards
            turn = math.pi + u[t][1] - 0.5
            shake = 2 * v * complex(math.cos(turn), math.sin(turn))
        pull = centripetal * SHAPE_STEPS * share * path[-1] / length
        v += shake + anxiety * (jitter * math.sqrt(share) * complex(*z[t]) - pull) * step
        v = v / max(abs(v), 1e-12) * step
        path.append(path[-1] + v)
    return torch.tensor([[p.real, p.imag] for p in path], dtype=torch.float64)


def trajectory_kernel(path: torch.Tensor, size: int) -> torch.Tensor:
    """Blur kernel [size, size] (float32, ≥ 0, sum 1) of a path [n, 2]: time spent near each pixel.

    The path is centred on its centroid at the kernel centre; points outside the support are dropped.
    """
    pts = path - path.mean(0) + (size - 1) / 2
    x0, y0 = pts[:, 0].floor(), pts[:, 1].floor()
    fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
    kernel = torch.zeros(size * size, dtype=torch.float64)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xs, ys = (x0 + dx).long(), (y0 + dy).long()
        inside = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
        kernel.index_add_(0, (ys * size + xs)[inside], wgt[inside])
    if kernel.sum() <= 0:
        raise ValueError(f"the path does not touch a {size}×{size} kernel")
    return (kernel / kernel.sum()).view(size, size).float()


def random_motion_kernel(size: int = 31, generator: torch.Generator | None = None,
                         max_length: float | None = None) -> torch.Tensor:
    """A random camera-shake kernel [size, size]: a trajectory of length U[1, max_length] px (default 0.9·size;
    the short ones nearly a point: a network trained on these kernels learns to leave sharp images alone),
    rasterised by :func:`trajectory_kernel`."""
    max_length = 0.9 * size if max_length is None else max_length
    length = 1.0 + float(torch.rand(1, generator=generator)) * max(max_length - 1.0, 0.0)
    return trajectory_kernel(random_trajectory(length=length, generator=generator), size)


def arc_kernel(length: float, size: int, angle: float = 0.0, turn: float = 0.0, steps: int = 2000) -> torch.Tensor:
    """Kernel [size, size] of a uniform motion along a circular arc: ``length`` pixels, starting in direction
    ``angle`` (radians) and turning by ``turn`` radians in all (0: a straight line). Kernels of this family
    are not what :func:`random_trajectory` draws: held-out blur for evaluating deblurring."""
    s = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    heading = angle + turn * s
    if abs(turn) < 1e-9:
        x, y = length * s * math.cos(angle), length * s * math.sin(angle)
    else:
        radius = length / turn
        x = radius * (torch.sin(heading) - math.sin(angle))
        y = radius * (math.cos(angle) - torch.cos(heading))
    return trajectory_kernel(torch.stack([x, y], 1), size)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """An isotropic Gaussian kernel [size, size] (float64, sum 1) of standard deviation ``sigma`` pixels (0: a
    point): a defocus blur, and SSIM's window."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r * r / (2 * max(sigma, 1e-3) ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def blur(image: torch.Tensor, kernel: torch.Tensor, padding: str = "reflect") -> torch.Tensor:
    """Convolve image [B, C, H, W] (or [C, H, W]) with kernel [k, k] (or one [B, k, k] per image).

    A true convolution (the kernel is flipped), output of the input's size; borders ``padding``-padded
    ('reflect', 'replicate', 'circular' or 'constant').
    """
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    b, c, h, w = x.shape
    k = kernel.to(x).expand(b, *kernel.shape[-2:]) if kernel.dim() == 2 else kernel.to(x)
    if k.shape[0] != b or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"kernel {tuple(kernel.shape)} does not fit images {tuple(image.shape)}")
    ks = k.shape[-1]
    lo, hi = (ks - 1) // 2, ks // 2
    x = F.pad(x, (lo, hi, lo, hi), mode=padding)
    weight = k.flip(-1, -2).repeat_interleave(c, 0)[:, None]  # [B·C, 1, k, k]: one kernel per image
    out = F.conv2d(x.reshape(1, b * c, h + ks - 1, w + ks - 1), weight, groups=b * c)
    out = out.view(b, c, h, w)
    return out[0] if squeeze else out


def motion_blur(image: torch.Tensor, size: int = 31, noise_sigma: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur image [B, C, H, W] with one random kernel per image, add N(0, noise_sigma²), clamp to [0, 1].

    Returns (blurred [B, C, H, W], kernels [B, size, size]).
    """
    kernels = torch.stack([random_motion_kernel(size, generator) for _ in range(image.shape[0])])
    out = blur(image, kernels)
    if noise_sigma > 0:
        out = out + noise_sigma * torch.randn(out.shape, generator=generator).to(out)
    return out.clamp(0.0, 1.0), kernels
