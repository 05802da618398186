"""SwinIR (Liang et al., ICCV-W 2021) with the official constructor and state-dict layout.

Our own implementation of the structure of JingyunLiang/SwinIR ``models/network_swinir.py``: official
checkpoints load unchanged. Differences from the official code, none of which touch the weights:

- ``attn_mask`` / ``relative_position_index`` are persistent buffers as in the official state dict, but on
  load they are always replaced by freshly computed values (a checkpoint saved at another ``img_size`` or
  without those buffers loads strictly).
- Inputs of any size: reflect-padded to a multiple of the window, output cropped back; the shifted-window
  mask for a size other than ``img_size`` is computed once per size and cached.
- The residual stream (Swin-block skips, RSTB skips) is kept in float32 when the model runs in float16 or
  bfloat16 (weights or autocast), and the RSTB convolution, which sees the un-normalised stream, runs in
  float32 under float16: the official model overflows float16 there (black images).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._common import check_image_batch, crop_to, pad_to_multiple

_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm evaluated in ``x``'s dtype (the float32 stream), whatever the weights' dtype."""
    w, b = norm.weight.to(x.dtype), norm.bias.to(x.dtype)
    return F.layer_norm(x, norm.normalized_shape, w, b, norm.eps).to(out_dtype)


def _home(buf: torch.Tensor) -> torch.device:
    """Where a recomputed buffer goes on load (also right for ``load_state_dict(assign=True)``)."""
    return torch.device("cpu") if buf.device.type == "meta" else buf.device


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole samples with probability ``p``, rescale the rest; identity at eval."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def _fp16_compute(ref: torch.Tensor, device_type: str) -> bool:
    if ref.dtype == torch.float16:
        return True
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def _fp32_island(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` in float32 with autocast off (weights cast on the fly, gradients still flow)."""
    params = {n: p.float() for n, p in module.named_parameters()}
    with torch.autocast(x.device.type, enabled=False):
        return torch.func.functional_call(module, params, (x.float(),))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B·nW, ws·ws, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B·nW, ws·ws, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """[ws², ws²] int64 index into the [(2ws−1)², heads] bias table (official layout)."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + ws - 1
    dx = xs[:, None] - xs[None, :] + ws - 1
    return dy * (2 * ws - 1) + dx


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device=None) -> torch.Tensor:
    """Additive mask [nW, ws², ws²] (0 or −100) for SW-MSA on an (h, w) map rolled by −shift.

    Each pixel gets a region label from its row band and column band (``[0, n−ws)``, ``[n−ws, n−shift)``,
    ``[n−shift, n)``); two tokens of a window may attend to each other only if their labels agree.
    """
    def bands(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - ws).long() + (i >= n - shift).long()

    labels = (bands(h)[:, None] * 3 + bands(w)[None, :]).view(1, h, w, 1)
    labels = window_partition(labels, ws).squeeze(-1)  # [nW, ws²]
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws×ws windows with a learned relative position bias."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The index is a function of the window size: never trust a checkpoint's copy.
        state_dict[prefix + "relative_position_index"] = relative_position_index(self.window_size).to(
            _home(self.relative_position_index))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B·nW, N, C]; mask: [nW, N, N] additive or None -> [B·nW, N, C]."""
        bn, n, c = x.shape
        nh, hd = self.num_heads, c // self.num_heads
        q, k, v = self.qkv(x).view(bn, n, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, nh).permute(2, 0, 1).unsqueeze(0)  # [1, nH, N, N]
        if mask is not None:
            # Fold the windows into the head axis so the mask broadcasts over the batch: [B, nW·nH, N, hd].
            nw = mask.shape[0]
            bias = (mask.unsqueeze(1).to(bias.dtype) + bias).reshape(1, nw * nh, n, n)
            q, k, v = (t.reshape(bn // nw, nw * nh, n, hd) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale)
        out = out.reshape(bn, nh, n, hd).transpose(1, 2).reshape(bn, n, c)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinTransformerBlock(nn.Module):
    """x + attn(norm1(x)) over (shifted) windows, then x + mlp(norm2(x)); x is the [B, H·W, C] stream."""

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:  # official rule: one window, no shift
            shift_size, window_size = 0, min(self.input_resolution)
        self.window_size, self.shift_size, self.drop_path = window_size, shift_size, drop_path
        # The stored mask is for img_size rounded up to whole windows (the official code fails otherwise).
        self.mask_resolution = tuple(-(-r // window_size) * window_size for r in self.input_resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.register_buffer("attn_mask", self._own_mask())

    def _own_mask(self) -> torch.Tensor | None:
        if self.shift_size == 0:
            return None
        return shifted_window_mask(*self.mask_resolution, self.window_size, self.shift_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The mask depends on img_size only: replace whatever the checkpoint holds (or lacks).
        mask = self._own_mask()
        if mask is None:
            state_dict.pop(prefix + "attn_mask", None)
        else:
            state_dict[prefix + "attn_mask"] = mask.to(_home(self.attn_mask))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, H·W, C] stream; ``mask`` is the shifted-window mask for ``size`` when it is not img_size."""
        (h, w), (b, l, c), ws, s = size, x.shape, self.window_size, self.shift_size
        y = _layer_norm(self.norm1, x, self.norm1.weight.dtype).view(b, h, w, c)
        if s > 0:
            y = torch.roll(y, (-s, -s), (1, 2))
            mask = self.attn_mask if size == self.mask_resolution else mask
        else:
            mask = None
        y = window_reverse(self.attn(window_partition(y, ws), mask), ws, h, w)
        if s > 0:
            y = torch.roll(y, (s, s), (1, 2))
        x = x + _drop_path(y.reshape(b, l, c), self.drop_path, self.training).to(x.dtype)
        y = self.mlp(_layer_norm(self.norm2, x, self.norm2.weight.dtype))
        return x + _drop_path(y, self.drop_path, self.training).to(x.dtype)


class BasicLayer(nn.Module):
    def __init__(self, dim, input_resolution, depth, num_heads, window_size, drop_path, use_checkpoint, **kw):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, drop_path=drop_path[i], **kw)
            for i in range(depth)])

    def forward(self, x, size, mask):
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(blk, x, size, mask, use_reentrant=False)
            else:
                x = blk(x, size, mask)
        return x


def _resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {kind!r}")


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks -> conv on the image-shaped tokens -> + input."""

    def __init__(self, dim, resi_connection, **kw):
        super().__init__()
        self.residual_group = BasicLayer(dim, **kw)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x, size, mask):
        """x: [B, H·W, C] stream -> same."""
        b, l, c = x.shape
        y = self.residual_group(x, size, mask).transpose(1, 2).reshape(b, c, *size)
        ref = next(self.conv.parameters())
        if x.dtype == torch.float32 and _fp16_compute(ref, x.device.type):
            y = _fp32_island(self.conv, y)  # the un-normalised stream overflows float16
        else:
            y = self.conv(y.to(ref.dtype))
        return x + y.flatten(2).transpose(1, 2).to(x.dtype)


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, H·W, C] tokens, LayerNorm'd when ``patch_norm``."""

    def __init__(self, dim, patch_norm):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else None

    def forward(self, x, stream_dtype):
        x = x.flatten(2).transpose(1, 2).to(stream_dtype)
        return x if self.norm is None else _layer_norm(self.norm, x, stream_dtype)


class SwinIR(nn.Module):
    r"""SwinIR image restoration network (official constructor, defaults and state-dict keys).

    ``upsampler``: 'pixelshuffle' (classical SR), 'pixelshuffledirect' (lightweight SR), 'nearest+conv'
    (real-world SR, ×2 or ×4) or '' / None (denoising, JPEG: output = input + residual, ``scale`` = 1).
    ``norm_layer`` is always ``nn.LayerNorm`` (not an argument, so that ``config`` stays JSON-friendly).

    forward: x [B, in_chans, H, W], any H, W (values in [0, 1] when img_range = 1)
             -> [B, in_chans, H·scale, W·scale], in x's dtype.
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True,
                 use_checkpoint=False, upscale=2, img_range=1.0, upsampler="", resi_connection="1conv"):
        super().__init__()
        upsampler = upsampler or ""
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, got {upsampler!r}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths and num_heads differ in length: {len(depths)} vs {len(num_heads)}")
        self.config = dict(
            img_size=list(img_size) if isinstance(img_size, (tuple, list)) else img_size, patch_size=patch_size,
            in_chans=in_chans, embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
            window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, ape=ape,
            patch_norm=patch_norm, use_checkpoint=use_checkpoint, upscale=upscale, img_range=img_range,
            upsampler=upsampler, resi_connection=resi_connection)
        self.in_chans, self.img_range, self.upsampler, self.ape = in_chans, img_range, upsampler, ape
        self.upscale = upscale
        self.scale = upscale if upsampler else 1
        mean = torch.tensor(_RGB_MEAN) if in_chans == 3 else torch.zeros(1)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        ps, isz = _pair(patch_size), _pair(img_size)
        self.patches_resolution = (isz[0] // ps[0], isz[1] // ps[1])
        # Blocks shrink their window to the map when img_size <= window (official rule): pad to both.
        block_ws = min(window_size, *self.patches_resolution)
        self.size_multiple = window_size * block_ws // math.gcd(window_size, block_ws)
        num_feat = 64

        # 1. shallow features, 2. deep features (RSTBs), 3. reconstruction.
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.patches_resolution), embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        n = sum(depths)  # stochastic depth rising linearly from 0 to drop_path_rate over all blocks
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList([
            RSTB(embed_dim, resi_connection, input_resolution=self.patches_resolution, depth=d, num_heads=nh,
                 window_size=window_size, drop_path=dpr[s:s + d], use_checkpoint=use_checkpoint,
                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                 attn_drop=attn_drop_rate)
            for d, nh, s in zip(depths, num_heads, starts)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)

        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
            self.upsample = nn.Sequential(*_pixelshuffle_stages(upscale, num_feat))
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale ** 2 * in_chans, 3, 1, 1),
                                          nn.PixelShuffle(upscale))
        elif upsampler == "nearest+conv":
            if upscale not in (2, 4):
                raise ValueError(f"upsampler 'nearest+conv' supports upscale 2 and 4 (as official), got {upscale}")
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            if upscale == 4:
                self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self._mask_cache: OrderedDict = OrderedDict()
        self.apply(_init_weights)

    def runtime_mask(self, size: tuple[int, int], device) -> torch.Tensor | None:
        """Shifted-window mask for a padded token map of ``size`` ≠ img_size (LRU cache of 2 sizes)."""
        blk = next((b for layer in self.layers for b in layer.residual_group.blocks if b.shift_size > 0), None)
        if blk is None or tuple(size) == blk.mask_resolution:
            return None
        key = (tuple(size), str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(*size, blk.window_size, blk.shift_size, device)
            while len(self._mask_cache) > 2:
                self._mask_cache.popitem(last=False)
        self._mask_cache.move_to_end(key)
        return self._mask_cache[key]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, embed_dim, H, W] (H, W multiples of the window) -> same; RSTB stream in ≥ float32."""
        size = (x.shape[2], x.shape[3])
        stream_dtype = torch.promote_types(self.norm.weight.dtype, torch.float32)
        t = self.patch_embed(x, stream_dtype)
        if self.ape:
            if size != self.patches_resolution:
                raise ValueError(f"ape=True needs inputs of img_size {self.patches_resolution}, got {size}")
            t = t + self.absolute_pos_embed.to(t.dtype)
        t = self.pos_drop(t)
        mask = self.runtime_mask(size, x.device)
        for layer in self.layers:
            t = layer(t, size, mask)
        t = _layer_norm(self.norm, t, self.norm.weight.dtype)
        return t.transpose(1, 2).reshape(x.shape[0], -1, *size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_chans, H, W] -> [B, in_chans, H·scale, W·scale]."""
        check_image_batch(x, self.in_chans, "SwinIR")
        in_dtype = x.dtype
        x, size = pad_to_multiple(x.to(self.conv_first.weight.dtype), self.size_multiple)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        first = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(first)) + first
        if self.upsampler == "":  # denoising / JPEG: residual to the (normalised) input
            x = x + self.conv_last(feat)
        elif self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        elif self.upsampler == "pixelshuffledirect":
            x = self.upsample(feat)
        else:  # nearest+conv
            x = self.conv_before_upsample(feat)
            x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
            if self.upscale == 4:
                x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
            x = self.conv_last(self.lrelu(self.conv_hr(x)))
        x = x / self.img_range + mean
        return crop_to(x, size, self.scale).to(in_dtype)


def _pixelshuffle_stages(scale: int, num_feat: int) -> list[nn.Module]:
    if scale & (scale - 1) == 0:
        stages = []
        for _ in range(int(math.log2(scale))):
            stages += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        return stages
    if scale == 3:
        return [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    raise ValueError(f"upsampler 'pixelshuffle' supports scales 2^n and 3, got {scale}")


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def swinir_classical_sr4(**overrides) -> SwinIR:
    """Classical ×4 SR SwinIR (the paper's IR net for 4× SR; official 001_classicalSR_*_x4 config)."""
    cfg = dict(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180,
               num_heads=[6] * 6, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
    return SwinIR(**{**cfg, **overrides})


def swinir_lightweight_sr4(**overrides) -> SwinIR:
    """Lightweight ×4 SR SwinIR (official 002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4 config)."""
    cfg = dict(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6] * 4, embed_dim=60,
               num_heads=[6] * 4, mlp_ratio=2, upsampler="pixelshuffledirect", resi_connection="1conv")
    return SwinIR(**{**cfg, **overrides})
