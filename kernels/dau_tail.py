"""dau_tail's GEMM on tensor cores: out = x + s_sp ⊙ (W₁ r) + W₂′ r, W₂′ = W₂·diag(s_ch) (DESIGN.md §4).

Why Triton and not CUDA C++: ``tl.dot`` lowers to wgmma on sm_90 (mma.sync on sm_80) with a software-pipelined
global→shared copy and swizzled, conflict-free shared layouts, and the same kernel runs on CPU tensors under
TRITON_INTERPRET=1, so CI checks the very code the GPU runs against the reference. The attention reductions
(channel sums, per-pixel max/mean, the 5×5 conv) are not GEMMs and stay in the extension: the op
``dpir_fast::dau_attention`` returns the folded operand fold [B, C, 2C] = [W₁ᵀ | W₂′ᵀ] in r's dtype (formed
once per image) and s_sp [B, H, W] float32; :func:`register` makes :func:`dau_tail` the CUDA kernel of
``dpir_fast::dau_tail``.

Tiles: BLOCK_M pixels × BLOCK_N output channels, K = input channels in BLOCK_K chunks, two float32
accumulators (W₁ r and W₂′ r) sharing each loaded r tile; 3 pipeline stages. Grid axis 0 enumerates
(pixel tile, channel tile) with the channel tile fastest, so the blocks that read one r tile run together and
r comes from DRAM once; axis 1 is the image. bf16/fp16 run on tensor cores with float32 accumulation; float32
runs 3×TF32 (``tf32x3``: split operands, float32-level error) on tensor cores too.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .sampler import MAX_INDEX, check_grid, dot_precision, on_tensor_device

_LIBRARY: torch.library.Library | None = None


@triton.jit
def dau_tail_kernel(r, x, out, fold, ssp, C, HW, N_TILES, s_b, s_c, s_p, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (⌈HW/BLOCK_M⌉·N_TILES, B); r, x, out share strides (s_b, s_c, s_p) over (image, channel, pixel)."""
    pid = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    m = (pid // N_TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = (pid % N_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < HW, n < C
    rows = img * s_b + m.to(tl.int64) * s_p
    k = tl.arange(0, BLOCK_K)
    w_rows = fold + img * C * 2 * C + n[None, :]
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, C, BLOCK_K):
        kk = k0 + k
        k_ok = kk < C
        a = tl.load(r + rows[:, None] + (kk * s_c)[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        w1 = tl.load(w_rows + kk[:, None] * (2 * C), mask=w_mask, other=0.0)
        w2 = tl.load(w_rows + kk[:, None] * (2 * C) + C, mask=w_mask, other=0.0)
        if PRECISION == "ieee":   # the interpreter: its dot takes float32 operands
            a, w1, w2 = a.to(tl.float32), w1.to(tl.float32), w2.to(tl.float32)
        acc1 = tl.dot(a, w1, acc1, input_precision=PRECISION)
        acc2 = tl.dot(a, w2, acc2, input_precision=PRECISION)
    mask = m_ok[:, None] & n_ok[None, :]
    offs = rows[:, None] + (n.to(tl.int64) * s_c)[None, :]
    s_sp = tl.load(ssp + img * HW + m, mask=m_ok, other=0.0)
    res = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32) + s_sp[:, None] * acc1 + acc2
    tl.store(out + offs, res.to(out.dtype.element_ty), mask=mask)


def tiles(channels: int, dtype: torch.dtype) -> dict:
    """Launch constants for ``channels`` (C) in ``dtype``: block sizes, warps, stages, dot precision."""
    # 3×TF32 splits each float32 operand in two: 128 output channels a block would spill (compile_check.py)
    block_n = min(128 if dtype != torch.float32 else 64, max(16, triton.next_power_of_2(channels)))
    block_k = min(64 if dtype != torch.float32 else 32, max(16, triton.next_power_of_2(channels)))
    return dict(BLOCK_M=128 if block_n <= 64 else 64, BLOCK_N=block_n, BLOCK_K=block_k,
                PRECISION=dot_precision(dtype), num_warps=8 if block_n > 16 else 4, num_stages=3)


@on_tensor_device
def dau_tail(r: torch.Tensor, x: torch.Tensor, w_sa: torch.Tensor, w_ca_down: torch.Tensor, w_ca_up: torch.Tensor,
             w_out: torch.Tensor) -> torch.Tensor:
    """x + conv1x1(cat[SA(r), CA(r)]) [B, C, H, W] in r's dtype and layout: ``dpir_fast::dau_attention`` (the
    extension) then :func:`dau_tail_kernel`. Same arguments and checks as ``ops.dau_tail``."""
    fold, ssp = torch.ops.dpir_fast.dau_attention(r, w_sa, w_ca_down, w_ca_up, w_out)  # checks r and the weights
    if x.shape != r.shape or x.dtype != r.dtype or x.device != r.device:
        raise RuntimeError(f"dpir_fast::dau_tail: x must have the shape, dtype and device of r "
                           f"({tuple(r.shape)}, {r.dtype}, {r.device}), got {tuple(x.shape)}, {x.dtype}, {x.device}")
    fmt = suggest_memory_format(r)   # the layout rule of the extension (common.h layout_of) and its Meta kernel
    r, x = r.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt)
    batch, channels, height, width = r.shape
    hw = height * width
    if r[0].numel() > MAX_INDEX:
        raise ValueError(f"one image of shape {tuple(r.shape[1:])} spans more than 2**31 elements; split it in tiles")
    out = torch.empty_like(r, memory_format=fmt)
    consts = tiles(channels, r.dtype)
    n_tiles = triton.cdiv(channels, consts["BLOCK_N"])
    grid = (check_grid(triton.cdiv(hw, consts["BLOCK_M"]) * n_tiles), batch)
    dau_tail_kernel[grid](r, x, out, fold, ssp, channels, hw, n_tiles, r.stride(0), r.stride(1), r.stride(3),
                          **consts)
    return out


def register() -> None:
    """Make :func:`dau_tail` the CUDA kernel of ``torch.ops.dpir_fast.dau_tail`` (once; _C must be loaded)."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("dpir_fast", "IMPL")
        _LIBRARY.impl("dau_tail", dau_tail, "CUDA")
