"""How the deblurring demo is scored (scripts/train_demo.py, stages deblur-tune and deblur-eval).

Sharp centre crops are blurred by one kernel each from three families, plus Gaussian noise σ ~ U[0, 2/255]
(train.fusion.DEBLUR_NOISE, what the IR net was trained with):

- generator: the camera-shake generator the networks were trained on (dpir_fast.data.blur, 31×31);
- line: uniform motion along a straight line of 9–21 px at a random angle (data.blur.arc_kernel, turn 0);
- curve: uniform motion along a circular arc of 9–21 px turning by 90–180° either way.

The last two are not what the generator draws: they measure how far the demo generalises. Every draw is keyed by
(family, image number), so each image gets the same blur in every run.
"""
from __future__ import annotations

import math

import torch

from dpir_fast.data.blur import arc_kernel, blur, random_motion_kernel
from dpir_fast.train.fusion import DEBLUR_NOISE

FAMILIES = ("generator", "line", "curve")
SEED = 7


def kernel(family: str, g: torch.Generator) -> torch.Tensor:
    """One blur kernel of ``family`` drawn with ``g``."""
    if family == "generator":
        return random_motion_kernel(31, g)
    length, angle = 9 + 12 * float(torch.rand(1, generator=g)), math.pi * float(torch.rand(1, generator=g))
    turn = 0.0
    if family == "curve":
        turn = math.copysign(math.pi / 2 * (1 + float(torch.rand(1, generator=g))), float(torch.randn(1, generator=g)))
    elif family != "line":
        raise ValueError(f"unknown blur family {family!r}; known: {FAMILIES}")
    return arc_kernel(length, 23, angle, turn)


def blurred(x0: torch.Tensor, family: str) -> torch.Tensor:
    """x0 [N, 3, H, W] in [0, 1] blurred per image by a ``family`` kernel, noise added, clamped."""
    out = []
    for i in range(len(x0)):
        g = torch.Generator().manual_seed(SEED * 1_000_003 + 1000 * FAMILIES.index(family) + i)
        k = kernel(family, g)
        sigma = DEBLUR_NOISE * float(torch.rand(1, generator=g))
        y = blur(x0[i:i + 1], k)
        out.append(y + sigma * torch.randn(y.shape, generator=g))
    return torch.cat(out).clamp(0.0, 1.0)
