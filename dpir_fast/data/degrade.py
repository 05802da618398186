"""Degradations for training and evaluation: MATLAB-compatible bicubic resizing (the ×4 SR benchmarks' LR images),
and JPEG's 4:2:0 chroma subsampling (``subsample_chroma``, a training augmentation).

``imresize`` follows MATLAB's ``imresize(x, scale, 'bicubic')``: the cubic convolution kernel with a = −0.5, the
kernel widened by 1/scale when shrinking (antialiasing), symmetric (mirror) boundary handling, and the dimension
with the smaller scale resized first. It works on float images and does not round (``quantize`` rounds to 8 bits
afterwards, as the benchmarks' LR PNG files are).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (MATLAB's ``cubic``, a = −0.5), support [−2, 2]."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax <= 2, far, torch.zeros_like(ax)))


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> torch.Tensor:
    """The [out_len, in_len] float64 matrix of MATLAB's 1-D bicubic resize (``contributions`` in imresize.m).

    Output pixel i (1-based) sits at u = i/scale + (1 − 1/scale)/2 in input coordinates; its weights are
    h(u − j) over the input pixels j within the kernel's reach, normalised to sum 1, where h = cubic, or
    scale·cubic(scale·x) of width 4/scale when shrinking with antialiasing. Indices outside [1, in_len]
    are mirrored (…, 2, 1, 1, 2, …, n, n, n−1, …).
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"resize needs positive lengths, got {in_len} -> {out_len}")
    width = 4.0
    if scale < 1 and antialias:
        kernel = lambda x: scale * cubic(scale * x)  # noqa: E731
        width /= scale
    else:
        kernel = cubic
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]  # [out, taps], 1-based
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(1, keepdim=True)
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    src = mirror[(idx.long() - 1) % (2 * in_len)]
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    return matrix.scatter_add_(1, src, weights)


def _out_size(size: tuple[int, int], scale) -> tuple[int, int]:
    sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
    return math.ceil(size[0] * sh), math.ceil(size[1] * sw)


def imresize(x: torch.Tensor, scale: float | tuple[float, float] | None = None,
             size: tuple[int, int] | None = None, antialias: bool = True) -> torch.Tensor:
    """MATLAB ``imresize(x, scale)`` with the bicubic kernel: x [..., H, W] → [..., h, w], float, not rounded.

    Give ``scale`` (the output size is ceil(H·scale), ceil(W·scale), as MATLAB) or ``size`` = (h, w) (the
    scales are then h/H and w/W). Computed in float64, returned in x's floating dtype.
    """
    if not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"imresize takes a floating tensor [..., H, W], got {x.dtype} {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if size is None:
        sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
        h, w = _out_size((H, W), (sh, sw))
    else:
        h, w = size
        sh, sw = h / H, w / W
    if sh <= 0 or sw <= 0 or h < 1 or w < 1:
        raise ValueError(f"cannot resize {H}x{W} by {scale or size}")
    out = x.to(torch.float64)
    steps = [(-2, h, sh), (-1, w, sw)]
    steps.sort(key=lambda s: s[2])  # MATLAB resizes along the smaller scale first (rows first on ties)
    for dim, n, s in steps:
        if n == out.shape[dim] and s == 1:
            continue
        m = resize_matrix(out.shape[dim], n, s, antialias).to(out.device)
        out = torch.movedim(torch.matmul(m, torch.movedim(out, dim, -2)), -2, dim)
    return out.to(x.dtype)


def quantize(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Clamp to [0, 1] and round to ``bits`` bits, as saving to an image file does."""
    levels = 2 ** bits - 1
    return torch.round(x.clamp(0, 1) * levels) / levels


def bicubic_downsample(x: torch.Tensor, factor: int = 4, round_8bit: bool = True) -> torch.Tensor:
    """The SR benchmarks' LR image: x [B, C, H, W] (H, W multiples of ``factor``) → [B, C, H/f, W/f]."""
    H, W = x.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"the HR size {H}x{W} must be a multiple of the factor {factor}; crop it first")
    y = imresize(x, size=(H // factor, W // factor))
    return quantize(y) if round_8bit else y


JFIF_LUMA = (0.299, 0.587, 0.114)   # JPEG's luma weights (JFIF, full-range BT.601)


def subsample_chroma(x: torch.Tensor) -> torch.Tensor:
    """x [B, 3, H, W] (H, W even) with its colour at half resolution, as a JPEG with 4:2:0 chroma holds it: the luma
    (JFIF weights) kept, the chroma x − luma averaged over 2×2 blocks and upsampled bilinearly (a decoder's smooth
    upsampling), clamped to [0, 1]. Cb and Cr are linear in x − luma, so this is JPEG's subsampling without its
    quantisation."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"subsample_chroma takes RGB [B, 3, H, W] with even H and W, got {tuple(x.shape)}")
    luma = (x * x.new_tensor(JFIF_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    chroma = F.interpolate(F.avg_pool2d(x - luma, 2), scale_factor=2, mode="bilinear", align_corners=False)
    return (luma + chroma).clamp(0, 1)
