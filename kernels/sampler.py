"""Sampler updates as one memory-bound pass with in-kernel noise.

``x_next = a·x0̂ + b·x_t + σ·z`` in float32, z = ``tl.randn(seed_b, step·2³² + (c·FH + y0 + y)·FW + x0 + x)``
(the stream of :mod:`dpir_fast.reference.noise`), written as the float32 NCHW master copy and, in the
same pass, as the next denoiser input [x̃ = den_scale·x_next, σ̃ = den_level] in its dtype and layout.
The jump, ancestral and DDIM steps are this one kernel with different host-side coefficients;
:func:`update_channel` is also the epilogue of FusionNet's last convolution (kernels/fusion.py).

Index vectors are int64 after the int32 divisions: pointers are 64-bit anyway, and the interpreter's
int32 overflow checks would cost five times as much.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from dpir_fast._backend import interpreting

BLOCK = 512
MAX_INDEX = 2**31 - 1


@triton.jit
def noise_base(p, y, x, step, FW, Y0, X0, TILED: tl.constexpr):
    """Counter offsets of channel 0 at pixels p = y·W + x (int64 vectors) on stream ``step``."""
    if TILED:
        pix = (y + Y0) * FW + (x + X0)
    else:
        pix = p
    return (step.to(tl.int64) << 32) + pix


@triton.jit
def update_channel(x0, c, mask, seed, noise_off, noise_plane, xt_ptr, xt_off, xt_sc, out_ptr, out_off, out_sc,
                   den_ptr, den_off, den_sc, a, b, sigma, den_scale,
                   HAS_XT: tl.constexpr, NOISE: tl.constexpr, WRITE_DEN: tl.constexpr):
    """Channel c of x_next = a·x0 + b·x_t + σ·z at a vector of pixels; stores x_next and x̃ = den_scale·x_next.

    ``*_off``: int64 offsets of channel 0 of each pixel; ``*_sc``: channel strides.
    """
    v = a * x0
    if HAS_XT:
        v += b * tl.load(xt_ptr + xt_off + c * xt_sc, mask=mask, other=0.0).to(tl.float32)
    if NOISE:
        v += sigma * tl.randn(seed, noise_off + c * noise_plane)
    tl.store(out_ptr + out_off + c * out_sc, v, mask=mask)
    if WRITE_DEN:
        tl.store(den_ptr + den_off + c * den_sc, (v * den_scale).to(den_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["step"])
def affine_kernel(x0_ptr, x0_b, x0_c, x0_h, x0_w, xt_ptr, xt_b, xt_c, xt_h, xt_w, out_ptr,
                  den_ptr, den_b, den_c, den_w, seed_ptr, a, b, sigma, den_scale, den_level, step,
                  H, W, FH, FW, Y0, X0, C: tl.constexpr, HAS_XT: tl.constexpr, NOISE: tl.constexpr,
                  WRITE_DEN: tl.constexpr, TILED: tl.constexpr, X0_FLAT: tl.constexpr, XT_FLAT: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Grid (cdiv(H·W, BLOCK), B): BLOCK pixels of image b, all C channels.

    *_FLAT: the tensor's pixel (y, x) sits at (y·W + x)·stride_w, so loads stay contiguous/vectorised.
    """
    img = tl.program_id(1).to(tl.int64)
    p32 = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = p32 < H * W
    y = (p32 // W).to(tl.int64)
    x = (p32 % W).to(tl.int64)
    p = p32.to(tl.int64)
    seed = tl.load(seed_ptr + img)
    noise_off = noise_base(p, y, x, step, FW, Y0, X0, TILED)
    x0_off = img * x0_b + (p * x0_w if X0_FLAT else y * x0_h + x * x0_w)
    xt_off = img * xt_b + (p * xt_w if XT_FLAT else y * xt_h + x * xt_w)
    den_off = img * den_b + p * den_w
    for c in tl.static_range(C):
        x0 = tl.load(x0_ptr + x0_off + c * x0_c, mask=mask, other=0.0).to(tl.float32)
        update_channel(x0, c, mask, seed, noise_off, FH * FW, xt_ptr, xt_off, xt_c,
                       out_ptr, img * (C * H * W) + p, H * W, den_ptr, den_off, den_c, a, b, sigma, den_scale,
                       HAS_XT, NOISE, WRITE_DEN)
    if WRITE_DEN:
        level = den_level + tl.zeros([BLOCK], tl.float32)
        tl.store(den_ptr + den_off + C * den_c, level.to(den_ptr.dtype.element_ty), mask=mask)


# Host side -----------------------------------------------------------------------------------------
def on_tensor_device(launcher):
    """Run ``launcher`` with the current CUDA device set to that of its first tensor argument (Triton
    launches on the current device, whatever device the tensors are on)."""
    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        device = next(a for a in args if torch.is_tensor(a)).device
        if device.type != "cuda":
            return launcher(*args, **kwargs)
        with torch.cuda.device(device):
            return launcher(*args, **kwargs)
    return wrapper


def tile_geometry(shape, full_size, origin) -> tuple[int, int, int, int, bool]:
    """(FH, FW, y0, x0, tiled) of a [B, C, H, W] crop at ``origin`` of a ``full_size`` image."""
    _, channels, height, width = shape
    full_h, full_w = full_size if full_size is not None else (height, width)
    y0, x0 = (int(v) for v in origin)
    if y0 < 0 or x0 < 0 or y0 + height > full_h or x0 + width > full_w:
        raise ValueError(f"a {height}×{width} crop at {origin} does not fit a {full_h}×{full_w} image")
    if channels * full_h * full_w > MAX_INDEX:
        raise ValueError(f"an image of {channels}×{full_h}×{full_w} values is too large for the kernels' "
                         "noise index; sample it in tiles")
    return full_h, full_w, y0, x0, (full_h, full_w, y0, x0) != (height, width, 0, 0)


def seed_tensor(seeds, batch: int, device) -> torch.Tensor:
    """Seeds [B] int64 on ``device`` (a tensor is used as is: static buffers stay static)."""
    if torch.is_tensor(seeds):
        if (seeds.shape != (batch,) or seeds.dtype != torch.int64 or seeds.device != torch.device(device)
                or not seeds.is_contiguous()):
            raise ValueError(f"seeds must be a contiguous int64 tensor [{batch}] on {device}, got {seeds.dtype} "
                             f"{tuple(seeds.shape)} on {seeds.device}")
        return seeds
    seeds = [int(s) for s in seeds]
    if len(seeds) != batch:
        raise ValueError(f"need one seed per image: {batch} images, {len(seeds)} seeds")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise ValueError(f"seeds are integers in [0, 2**63), got {seeds}")
    return torch.tensor(seeds, dtype=torch.int64, device=device)


def new_den(shape, dtype, channels_last: bool, device) -> torch.Tensor:
    """An empty denoiser input [B, C + 1, H, W] in ``dtype`` and the asked memory format."""
    batch, channels, height, width = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(batch, channels + 1, height, width, dtype=dtype, device=device, memory_format=fmt)


def check_extent(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, C, H, W] if one image's offsets stay below 2³¹ (the kernels' noise and plane index)."""
    if sum((n - 1) * abs(s) for n, s in zip(x.shape[1:], x.stride()[1:])) > MAX_INDEX:
        raise ValueError(f"one image of shape {tuple(x.shape[1:])} spans more than 2**31 elements; "
                         "sample it in tiles")
    return x


def is_flat(x: torch.Tensor) -> bool:
    """Whether pixel (y, x) of every plane sits at (y·W + x)·stride(3): NCHW, NHWC, batch/channel slices."""
    return x.shape[2] == 1 or x.stride(2) == x.shape[3] * x.stride(3)


@on_tensor_device
def affine_update(x0: torch.Tensor, x_t: torch.Tensor | None, a: float, b: float, sigma: float, step: int,
                  seeds: torch.Tensor, den_scale: float = 1.0, den_level: float = 0.0, full_size=None,
                  origin=(0, 0), den_dtype: torch.dtype | None = None, den_channels_last: bool = False):
    """x_next [B, C, H, W] float32 (and the denoiser input [B, C + 1, H, W] when ``den_dtype`` is given).

    x0 / x_t: [B, C, H, W], any float dtype and strides; ``seeds``: int64 [B] on the device.
    """
    batch, channels, height, width = check_extent(x0).shape
    if x_t is not None and x_t.shape != x0.shape:
        raise ValueError(f"x0̂ and x_t differ in shape: {tuple(x0.shape)} vs {tuple(x_t.shape)}")
    full_h, full_w, y0, x0_off, tiled = tile_geometry(x0.shape, full_size, origin)
    out = torch.empty(x0.shape, dtype=torch.float32, device=x0.device)
    den = new_den(x0.shape, den_dtype, den_channels_last, x0.device) if den_dtype is not None else out
    has_xt = x_t is not None and b != 0
    xt = check_extent(x_t) if has_xt else x0
    # The interpreter pays per operation, not per element: one program per image there.
    block = min(triton.next_power_of_2(height * width), 1 << 14) if interpreting() else BLOCK
    grid = (triton.cdiv(height * width, block), batch)
    affine_kernel[grid](x0, *x0.stride(), xt, *xt.stride(), out, den, den.stride(0), den.stride(1), den.stride(3),
                        seeds, a, b, sigma, den_scale, den_level, step, height, width, full_h, full_w, y0, x0_off,
                        C=channels, HAS_XT=has_xt, NOISE=sigma > 0, WRITE_DEN=den_dtype is not None, TILED=tiled,
                        X0_FLAT=is_flat(x0), XT_FLAT=is_flat(xt), BLOCK=block)
    return (out, den) if den_dtype is not None else out
