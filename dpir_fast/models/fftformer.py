"""FFTformer (Kong et al., CVPR 2023) with the official constructor and state-dict layout.

Our own implementation of the structure of kkkls/FFTformer ``basicsr/models/archs/fftformer_arch.py``:
official checkpoints (raw state dicts, e.g. ``net_g_GoPro.pth``) load unchanged. Differences from the
official code, none of which touch the weights:

- The frequency-domain parts (per-8×8-patch rfft2/irfft2 of DFFN and FSAS, and FSAS's LayerNorm of the
  correlation, whose values are unbounded) always run in float32 with autocast off; their results go back
  to the dtype of the surrounding stream.
- Inputs of any size: reflect-padded to a multiple of 32 (two 2× downsamplings × 8×8 patches, as the
  official test script does), output cropped back.
- ``num_blocks`` may have 3 or 4 entries: the official default has 4, the GoPro training config 3; the
  fourth is never used by the official network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_image_batch, crop_to, pad_to_multiple

PATCH = 8


def _to_patches(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H/8, W/8, 8, 8]."""
    b, c, h, w = x.shape
    return x.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).transpose(3, 4)


def _from_patches(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H/8, W/8, 8, 8] -> [B, C, H, W]."""
    b, c, nh, nw = x.shape[:4]
    return x.transpose(3, 4).reshape(b, c, nh * PATCH, nw * PATCH)


def _rfft2(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft2(_to_patches(x.float()))


def _irfft2(spec: torch.Tensor) -> torch.Tensor:
    return _from_patches(torch.fft.irfft2(spec, s=(PATCH, PATCH)))


class ChannelLayerNorm(nn.Module):
    """The official 'WithBias' LayerNorm over the channels of [B, C, H, W] (eps 1e-5, keys body.*)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised in at least float32, returned in x's dtype."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        w, b = self.body.weight.to(dtype), self.body.bias.to(dtype)
        y = F.layer_norm(x.to(dtype).permute(0, 2, 3, 1), self.body.normalized_shape, w, b, self.body.eps)
        return y.permute(0, 3, 1, 2).to(x.dtype)


class DFFN(nn.Module):
    """1×1 -> per-patch learned frequency filter -> depthwise 3×3 -> GELU gate -> 1×1."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=bias)
        self.fft = nn.Parameter(torch.ones(hidden * 2, 1, 1, PATCH, PATCH // 2 + 1))
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project_in(x)
        with torch.autocast(x.device.type, enabled=False):
            y = _irfft2(_rfft2(x) * self.fft.float()).to(x.dtype)
        x1, x2 = self.dwconv(y).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class FSAS(nn.Module):
    """Frequency-domain self-attention: per-patch correlation of q and k, normalised, gating v."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.to_hidden = nn.Conv2d(dim, dim * 6, 1, bias=bias)
        self.to_hidden_dw = nn.Conv2d(dim * 6, dim * 6, 3, 1, 1, groups=dim * 6, bias=bias)
        self.project_out = nn.Conv2d(dim * 2, dim, 1, bias=bias)
        self.norm = ChannelLayerNorm(dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_hidden_dw(self.to_hidden(x)).chunk(3, dim=1)
        with torch.autocast(x.device.type, enabled=False):
            corr = self.norm(_irfft2(_rfft2(q) * _rfft2(k))).to(v.dtype)
        return self.project_out(v * corr)


class TransformerBlock(nn.Module):
    """x + FSAS(LN(x)) when ``att``, then x + DFFN(LN(x))."""

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False, att: bool = False):
        super().__init__()
        self.att = att
        if att:
            self.norm1 = ChannelLayerNorm(dim)
            self.attn = FSAS(dim, bias)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = DFFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.att:
            x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Fuse(nn.Module):
    """Skip fusion: 1×1 on [decoder, encoder] -> DFFN block (2C) -> 1×1 -> split halves and add."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.n_feat = n_feat
        self.att_channel = TransformerBlock(n_feat * 2)
        self.conv = nn.Conv2d(n_feat * 2, n_feat * 2, 1)
        self.conv2 = nn.Conv2d(n_feat * 2, n_feat * 2, 1)

    def forward(self, dec: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.att_channel(self.conv(torch.cat((dec, enc), dim=1))))
        e, d = x.split(self.n_feat, dim=1)
        return e + d


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_c: int, embed_dim: int, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, 1, 1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Resample(nn.Module):
    """Bilinear ×``factor`` then a bias-free 3×3 conv to ``out`` channels (official Downsample/Upsample)."""

    def __init__(self, n_feat: int, factor: float, out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False),
                                  nn.Conv2d(n_feat, out, 3, 1, 1, bias=False))

    def forward(self, x):
        return self.body(x)


class FFTformer(nn.Module):
    """FFTformer deblurring network (official constructor, defaults and state-dict keys).

    forward: x [B, inp_channels, H, W], any H, W, values in [0, 1] -> [B, out_channels, H, W]
             (= x + residual, unclamped), in x's dtype.
    """

    scale = 1
    size_multiple = 4 * PATCH

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(6, 6, 12, 8), num_refinement_blocks=4,
                 ffn_expansion_factor=3, bias=False):
        super().__init__()
        if len(num_blocks) not in (3, 4):
            raise ValueError(f"num_blocks needs 3 (or 4, the last unused) entries, got {list(num_blocks)}")
        self.config = dict(inp_channels=inp_channels, out_channels=out_channels, dim=dim,
                           num_blocks=list(num_blocks), num_refinement_blocks=num_refinement_blocks,
                           ffn_expansion_factor=ffn_expansion_factor, bias=bias)
        self.in_channels = inp_channels

        def stage(d: int, n: int, att: bool) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(d, ffn_expansion_factor, bias, att) for _ in range(n)])

        d1, d2, d3 = dim, dim * 2, dim * 4
        n1, n2, n3 = num_blocks[:3]
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = stage(d1, n1, False)
        self.down1_2 = Resample(d1, 0.5, d2)
        self.encoder_level2 = stage(d2, n2, False)
        self.down2_3 = Resample(d2, 0.5, d3)
        self.encoder_level3 = stage(d3, n3, False)
        self.decoder_level3 = stage(d3, n3, True)
        self.up3_2 = Resample(d3, 2, d2)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, 1, bias=bias)  # in the official state dict, never used
        self.decoder_level2 = stage(d2, n2, True)
        self.up2_1 = Resample(d2, 2, d1)
        self.decoder_level1 = stage(d1, n1, True)
        self.refinement = stage(d1, num_refinement_blocks, True)
        self.fuse2 = Fuse(d2)
        self.fuse1 = Fuse(d1)
        self.output = nn.Conv2d(d1, out_channels, 3, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, inp_channels, H, W] -> [B, out_channels, H, W]."""
        check_image_batch(x, self.in_channels, "FFTformer")
        in_dtype = x.dtype
        x, size = pad_to_multiple(x.to(self.output.weight.dtype), self.size_multiple)
        enc1 = self.encoder_level1(self.patch_embed(x))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        dec3 = self.decoder_level3(self.encoder_level3(self.down2_3(enc2)))
        dec2 = self.decoder_level2(self.fuse2(self.up3_2(dec3), enc2))
        dec1 = self.decoder_level1(self.fuse1(self.up2_1(dec2), enc1))
        out = self.output(self.refinement(dec1)) + x
        return crop_to(out, size).to(in_dtype)


def fftformer_gopro(**overrides) -> FFTformer:
    """The official GoPro deblurring configuration (dim 48, blocks [6, 6, 12], 4 refinement blocks)."""
    cfg = dict(inp_channels=3, out_channels=3, dim=48, num_blocks=[6, 6, 12], num_refinement_blocks=4,
               ffn_expansion_factor=3, bias=False)
    return FFTformer(**{**cfg, **overrides})
