"""Image quality metrics: PSNR and SSIM (Wang et al. 2004, Gaussian window), per image.

Images are float tensors [B, C, H, W] in [0, 1]. ``y_channel`` converts RGB to the luma Y of ITU-R BT.601 as
MATLAB's ``rgb2ycbcr`` (the SR benchmarks' convention); ``border`` shaves that many pixels off every side.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.blur import gaussian_kernel


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """Y of BT.601 in [16/255, 235/255] [B, 1, H, W] from RGB [B, 3, H, W] in [0, 1] (MATLAB rgb2ycbcr)."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) / 255 + 16 / 255


def _prepare(x: torch.Tensor, y: torch.Tensor, border: int, y_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"metrics need two [B, C, H, W] tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if border:
        x, y = x[..., border:-border, border:-border], y[..., border:-border, border:-border]
    return x, y


def psnr(x: torch.Tensor, y: torch.Tensor, border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """PSNR in dB [B] of x against y, peak 1."""
    x, y = _prepare(x, y, border, y_channel)
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-20))


def ssim(x: torch.Tensor, y: torch.Tensor, border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """SSIM [B] (11×11 Gaussian window, σ 1.5, K1 0.01, K2 0.03, peak 1; 'valid' windows only, averaged over
    pixels and channels), as Wang et al.'s reference code and the SR benchmarks compute it."""
    x, y = _prepare(x, y, border, y_channel)
    c = x.shape[1]
    win = gaussian_kernel(11, 1.5).to(x.device).expand(c, 1, 11, 11)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return index.flatten(1).mean(1)
