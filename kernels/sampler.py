"""Sampler updates as one memory-bound pass with in-kernel noise.

``x_next = a·x0̂ + b·x_t + σ·z`` in float32, z = ``tl.randn(seed_b, step·2³² + base_b + y·row_b + x + c·plane_b)``
(the stream of :mod:`dpir_fast.reference.noise`, keys read from a device tensor [B, 4]), written as the float32 NCHW master copy and, in the
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
from dpir_fast.reference.noise import noise_keys

BLOCK = 512
MAX_INDEX = 2**31 - 1


@triton.jit
def noise_base(key_ptr, img, y, x, step, mask):
    """(seed, counter offsets of channel 0, channel plane) of pixels (y, x) of image ``img`` on stream ``step``,
    from its noise key (seed, base, row, plane) (:func:`dpir_fast.reference.noise.noise_keys`)."""
    key = key_ptr + img * 4 + tl.zeros_like(y)     # one pointer per pixel: img is a scalar or a vector
    seed = tl.load(key, mask=mask, other=0)
    base = tl.load(key + 1, mask=mask, other=0)
    row = tl.load(key + 2, mask=mask, other=0)
    plane = tl.load(key + 3, mask=mask, other=0)
    return seed, (step.to(tl.int64) << 32) + base + y * row + x, plane


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
                  den_ptr, den_b, den_c, den_w, key_ptr, a, b, sigma, den_scale, den_level, step,
                  H, W, TILES, C: tl.constexpr, HAS_XT: tl.constexpr, NOISE: tl.constexpr,
                  WRITE_DEN: tl.constexpr, X0_FLAT: tl.constexpr, XT_FLAT: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Grid (B·TILES,), TILES = cdiv(H·W, BLOCK): program i runs BLOCK pixels of image i // TILES, all C channels
    (one grid axis: the second and third hold at most 65535 programs).

    *_FLAT: the tensor's pixel (y, x) sits at (y·W + x)·stride_w, so loads stay contiguous/vectorised.
    """
    pid = tl.program_id(0)
    img = (pid // TILES).to(tl.int64)
    p32 = (pid % TILES) * BLOCK + tl.arange(0, BLOCK)
    mask = p32 < H * W
    y = (p32 // W).to(tl.int64)
    x = (p32 % W).to(tl.int64)
    p = p32.to(tl.int64)
    seed, noise_off, plane = noise_base(key_ptr, img, y, x, step, mask)
    x0_off = img * x0_b + (p * x0_w if X0_FLAT else y * x0_h + x * x0_w)
    xt_off = img * xt_b + (p * xt_w if XT_FLAT else y * xt_h + x * xt_w)
    den_off = img * den_b + p * den_w
    for c in tl.static_range(C):
        x0 = tl.load(x0_ptr + x0_off + c * x0_c, mask=mask, other=0.0).to(tl.float32)
        update_channel(x0, c, mask, seed, noise_off, plane, xt_ptr, xt_off, xt_c,
                       out_ptr, img * C * H * W + p, H * W, den_ptr, den_off, den_c, a, b, sigma, den_scale,
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


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input_precision for operands of ``dtype``: 3×TF32 for float32 on a GPU (tensor cores at
    float32-level error), the dtype's own MMA for bf16/fp16 (the argument is then unused); "ieee" under the
    interpreter, whose dot reads bf16 as raw integers, so there the kernels give it float32 operands."""
    if interpreting():
        return "ieee"
    return "tf32x3" if dtype == torch.float32 else "tf32"


def key_tensor(seeds, shape, full_size, origin, device) -> torch.Tensor:
    """Noise keys [B, 4] int64 on ``device`` (:func:`~dpir_fast.reference.noise.noise_keys`); keys already
    there are used as is, so static buffers stay static."""
    keys = noise_keys(seeds, shape, full_size, origin)
    if keys.device == torch.device(device) and keys.is_contiguous():
        return keys
    return keys.to(device).contiguous()


def check_den(buf: torch.Tensor | None, shape, dtype, channels_last: bool, device) -> torch.Tensor:
    """The denoiser input [B, C + 1, H, W] in ``dtype`` and the asked memory format: ``buf`` when given
    (checked), else a new one."""
    batch, channels, height, width = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if buf is None:
        return torch.empty(batch, channels + 1, height, width, dtype=dtype, device=device, memory_format=fmt)
    if (tuple(buf.shape) != (batch, channels + 1, height, width) or buf.dtype != dtype or buf.device != device
            or not buf.is_contiguous(memory_format=fmt)):
        raise ValueError(f"den_out must be {dtype} [{batch}, {channels + 1}, {height}, {width}] "
                         f"({'channels_last' if channels_last else 'contiguous'}) on {device}, got {buf.dtype} "
                         f"{tuple(buf.shape)} strides {buf.stride()} on {buf.device}")
    return buf


def check_out(buf: torch.Tensor | None, shape, dtype, device) -> torch.Tensor:
    """A contiguous ``dtype`` tensor of ``shape``: ``buf`` when given (checked), else a new one."""
    if buf is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or buf.device != device or not buf.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor {tuple(shape)} on {device}, got {buf.dtype} "
                         f"{tuple(buf.shape)} on {buf.device}")
    return buf


def check_extent(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, C, H, W] if one image's offsets stay below 2³¹ (the kernels' noise and plane index)."""
    if sum((n - 1) * abs(s) for n, s in zip(x.shape[1:], x.stride()[1:])) > MAX_INDEX:
        raise ValueError(f"one image of shape {tuple(x.shape[1:])} spans more than 2**31 elements; "
                         "sample it in tiles")
    return x


def check_grid(programs: int) -> int:
    """``programs`` if a one-axis grid can launch them (CUDA allows 2³¹ − 1 blocks on grid axis x)."""
    if programs > MAX_INDEX:
        raise ValueError(f"{programs} thread blocks exceed CUDA's 2**31 - 1 on one grid axis; "
                         "split the batch or sample in tiles")
    return programs


def check_rows(rows: int) -> int:
    """``rows`` (pixels over a batch, a kernel's int32 row index) if they stay below 2³¹."""
    if rows > MAX_INDEX:
        raise ValueError(f"{rows} pixels in one fused call exceed the kernels' int32 row index (2**31 - 1); "
                         "split the batch or sample in tiles")
    return rows


def is_flat(x: torch.Tensor) -> bool:
    """Whether pixel (y, x) of every plane sits at (y·W + x)·stride(3): NCHW, NHWC, batch/channel slices."""
    return x.shape[2] == 1 or x.stride(2) == x.shape[3] * x.stride(3)


@on_tensor_device
def affine_update(x0: torch.Tensor, x_t: torch.Tensor | None, a: float, b: float, sigma: float, step: int,
                  seeds, den_scale: float = 1.0, den_level: float = 0.0, full_size=None,
                  origin=(0, 0), den_dtype: torch.dtype | None = None, den_channels_last: bool = False,
                  out: torch.Tensor | None = None, den_out: torch.Tensor | None = None):
    """x_next [B, C, H, W] float32 (and the denoiser input [B, C + 1, H, W] when ``den_dtype`` is given).

    x0 / x_t: [B, C, H, W], any float dtype and strides; ``seeds``: as :func:`key_tensor` takes them.
    ``out`` / ``den_out``: buffers to write into (``out`` may be x_t itself: each value is read before written).
    """
    batch, channels, height, width = check_extent(x0).shape
    if x_t is not None and x_t.shape != x0.shape:
        raise ValueError(f"x0̂ and x_t differ in shape: {tuple(x0.shape)} vs {tuple(x_t.shape)}")
    keys = key_tensor(seeds, x0.shape, full_size, origin, x0.device)
    out = check_out(out, x0.shape, torch.float32, x0.device)
    den = check_den(den_out, x0.shape, den_dtype, den_channels_last, x0.device) if den_dtype is not None else out
    has_xt = x_t is not None and b != 0
    xt = check_extent(x_t) if has_xt else x0
    # The interpreter pays per operation, not per element: one program per image there.
    block = min(triton.next_power_of_2(height * width), 1 << 14) if interpreting() else BLOCK
    tiles = triton.cdiv(height * width, block)
    affine_kernel[(check_grid(batch * tiles),)](
                        x0, *x0.stride(), xt, *xt.stride(), out, den, den.stride(0), den.stride(1), den.stride(3),
                        keys, a, b, sigma, den_scale, den_level, step, height, width, tiles,
                        C=channels, HAS_XT=has_xt, NOISE=sigma > 0, WRITE_DEN=den_dtype is not None,
                        X0_FLAT=is_flat(x0), XT_FLAT=is_flat(xt), BLOCK=block)
    return (out, den) if den_dtype is not None else out
