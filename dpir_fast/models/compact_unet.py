"""CompactUNet: a small residual U-Net for blind deblurring, sized for training on a CPU (the deblur demo's IR net).

    out = y + tail(decoder(encoder(head(y))))

- ``head``: the zero-sum conv3×3 of :class:`~dpir_fast.models.compact_sr.ZeroSumConv2d` (reflected borders).
- encoder: at each of ``levels`` scales ``blocks`` residual blocks, then a stride-2 conv3×3 to the next width
  (widths ``n_feat``·``mults``); a bottleneck of ``2·blocks`` residual blocks at 1/2^levels resolution, whose
  receptive field covers long blur trajectories; decoder: conv1×1 + pixel shuffle ×2 up, the encoder's features
  added, ``blocks`` residual blocks.
- ``tail``: conv3×3 to the image, zero at initialisation (training starts from the blurred input).
- As in CompactSR, no convolution has a bias and the head's kernels sum to zero: an image constant per channel
  comes out unchanged, at every pixel, and the residual ignores a constant added to a channel.
H and W must be multiples of 2^levels (``size_multiple``; the pipeline reflect-pads to it).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_image_batch
from .compact_sr import ResBlock, ZeroSumConv2d


class CompactUNet(nn.Module):
    """y [B, in_channels, H, W] in [0, 1] → restored [B, in_channels, H, W] (not clamped).

    Defaults: 32 features, widths 32/64/96/128 over 3 levels, 1 block per level: 1,373,888 parameters.
    """

    scale = 1

    def __init__(self, in_channels: int = 3, n_feat: int = 32, mults=(1, 2, 3, 4), blocks: int = 1):
        super().__init__()
        mults = tuple(int(m) for m in mults)
        self.config = dict(in_channels=in_channels, n_feat=n_feat, mults=list(mults), blocks=blocks)
        self.in_channels, self.levels = in_channels, len(mults) - 1
        self.size_multiple = 2 ** self.levels
        widths = [n_feat * m for m in mults]
        self.head = ZeroSumConv2d(in_channels, widths[0], 3, padding=1, bias=False, padding_mode="reflect")
        self.encoders = nn.ModuleList(nn.Sequential(*(ResBlock(w) for _ in range(blocks))) for w in widths[:-1])
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False)
                                   for a, b in zip(widths[:-1], widths[1:]))
        self.bottleneck = nn.Sequential(*(ResBlock(widths[-1]) for _ in range(2 * blocks)))
        self.ups = nn.ModuleList(nn.Conv2d(b, 4 * a, 1, bias=False) for a, b in zip(widths[:-1], widths[1:]))
        self.decoders = nn.ModuleList(nn.Sequential(*(ResBlock(w) for _ in range(blocks))) for w in widths[:-1])
        self.tail = nn.Conv2d(widths[0], in_channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.tail.weight)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        check_image_batch(y, self.in_channels, "CompactUNet")
        if y.shape[-2] % self.size_multiple or y.shape[-1] % self.size_multiple:
            raise ValueError(f"CompactUNet needs H and W multiples of {self.size_multiple}, got "
                             f"{tuple(y.shape[-2:])}; pad the input (the DPIR pipeline does)")
        feat, skips = self.head(y), []
        for encode, down in zip(self.encoders, self.downs):
            feat = encode(feat)
            skips.append(feat)
            feat = down(feat)
        feat = self.bottleneck(feat)
        for i in reversed(range(self.levels)):
            feat = self.decoders[i](F.pixel_shuffle(self.ups[i](feat), 2) + skips[i])
        return (y.float() + self.tail(feat).float()).to(y.dtype)
