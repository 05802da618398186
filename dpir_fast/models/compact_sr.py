"""CompactSR: a small residual CNN for ×s super-resolution, sized for training on a CPU (the demo's IR net).

    out = bicubic_s(y) + PixelShuffle_s(conv_tail(body(head(y))))

- ``head``: conv3×3 3 → n_feat whose kernels sum to zero over their 3×3 window (each (out, in) pair), with
  reflected borders: it sees only differences between neighbouring pixels, never the absolute level.
- ``body``: ``n_blocks`` residual blocks conv3×3 → ReLU → conv3×3 (+ skip), then conv3×3, plus a long skip.
- ``tail``: conv3×3 n_feat → 3·s², zero at initialisation (training starts from bicubic), pixel shuffle.
- No convolution has a bias and ReLU is positively homogeneous, so the residual branch maps a zero input to an
  exact zero. With the zero-sum head, any image that is constant per channel gets residual 0 at every pixel,
  borders and corners included: a flat image comes out as its bicubic upsampling, which is the same constant.
  For the same reason the residual does not change when a constant is added to a channel, and scales with
  the contrast (r(a·y) = a·r(y) for a > 0); no grid pattern can appear on flat areas.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_image_batch


class ZeroSumConv2d(nn.Conv2d):
    """A bias-free conv whose every (out, in) kernel is centred to sum to zero: constant inputs give 0.

    It runs in its weights' precision whatever autocast asks: rounded to bf16, the centred kernels would no longer
    sum to zero and a flat image would get a residual."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            weight = self.weight - self.weight.mean(dim=(-2, -1), keepdim=True)
            return self._conv_forward(x.to(weight.dtype), weight, None)


class ResBlock(nn.Module):
    def __init__(self, n_feat: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feat, n_feat, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(n_feat, n_feat, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class CompactSR(nn.Module):
    """y [B, in_channels, h, w] in [0, 1] → [B, in_channels, s·h, s·w] (not clamped), s = ``scale``.

    Defaults: 64 features, 10 residual blocks, ×4: 788,416 parameters.
    """

    size_multiple = 1

    def __init__(self, in_channels: int = 3, n_feat: int = 64, n_blocks: int = 10, scale: int = 4):
        super().__init__()
        self.config = dict(in_channels=in_channels, n_feat=n_feat, n_blocks=n_blocks, scale=scale)
        self.in_channels, self.scale = in_channels, scale
        self.head = ZeroSumConv2d(in_channels, n_feat, 3, padding=1, bias=False, padding_mode="reflect")
        self.body = nn.Sequential(*(ResBlock(n_feat) for _ in range(n_blocks)),
                                  nn.Conv2d(n_feat, n_feat, 3, padding=1, bias=False))
        self.tail = nn.Conv2d(n_feat, in_channels * scale * scale, 3, padding=1, bias=False)
        nn.init.zeros_(self.tail.weight)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        check_image_batch(y, self.in_channels, "CompactSR")
        feat = self.head(y)
        residual = F.pixel_shuffle(self.tail(feat + self.body(feat)), self.scale)
        base = F.interpolate(y.float(), scale_factor=self.scale, mode="bicubic", align_corners=False)
        return (base + residual.float()).to(y.dtype)
