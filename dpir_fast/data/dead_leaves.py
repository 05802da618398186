"""Dead-leaves images: occluding disks with a scale-invariant radius law, a flat colour and a texture each.

Their statistics (edges at every scale and orientation, power-law spectrum, flat areas, occlusions) resemble
natural images, so restoration networks trained on them transfer to photos. Used as synthetic training data
for the demo weights (scripts/train_demo.py).
"""
from __future__ import annotations

import numpy as np


def dead_leaves(size: int, rng: np.random.Generator, r_min: float = 2.0, r_max: float = 120.0,
                texture: float = 0.5, supersample: int = 2) -> np.ndarray:
    """A [size, size, 3] float32 image in [0, 1].

    Disks are laid front to back until the canvas is covered; radii follow p(r) ∝ r⁻³ on [r_min, r_max]
    (pixels); with probability ``texture`` a disk carries a sinusoidal grating or smoothed noise over its
    colour. Rendered at ``supersample``× and box-filtered down, so edges are anti-aliased.
    """
    s = supersample
    n = size * s
    image = np.zeros((n, n, 3), np.float32)
    free = np.ones((n, n), bool)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    a, b = r_min ** -2, r_max ** -2
    for count in range(10**7):
        if count % 256 == 0 and free.mean() <= 1e-3:
            break
        r = float((a - rng.random() * (a - b)) ** -0.5) * s  # inverse CDF of p(r) ∝ r⁻³
        cy, cx = rng.uniform(-r, n + r, 2)
        y0, y1, x0, x1 = (int(np.clip(v, 0, n)) for v in (cy - r, cy + r + 1, cx - r, cx + r + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        win = (slice(y0, y1), slice(x0, x1))
        mask = ((yy[win] - cy) ** 2 + (xx[win] - cx) ** 2 <= r * r) & free[win]
        if not mask.any():
            continue
        colour = rng.random(3).astype(np.float32)
        fill = np.broadcast_to(colour, mask.shape + (3,)).copy()
        if rng.random() < texture:
            fill += _texture(yy[win], xx[win], rng)[..., None] * rng.uniform(0.3, 1.0, 3).astype(np.float32)
        image[win][mask] = fill[mask]
        free[win][mask] = False
    image = image.reshape(size, s, size, s, 3).mean(axis=(1, 3))
    return np.clip(image, 0.0, 1.0)


def _texture(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean pattern over the given coordinates: a sinusoidal grating or box-smoothed noise."""
    amplitude = rng.uniform(0.05, 0.3)
    if rng.random() < 0.5:
        period, angle = rng.uniform(3, 40), rng.uniform(0, np.pi)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / period)
        return (amplitude * np.sin(phase + rng.uniform(0, 2 * np.pi))).astype(np.float32)
    noise = rng.standard_normal(yy.shape).astype(np.float32)
    k = int(rng.integers(1, 4))
    if k > 1:  # separable box blur of width 2k − 1
        for axis in (0, 1):
            noise = sum(np.roll(noise, shift, axis) for shift in range(-k + 1, k)) / (2 * k - 1)
    return amplitude * noise / max(float(noise.std()), 1e-6)
