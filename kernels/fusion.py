"""FusionNet as NHWC implicit-GEMM Triton convolutions with fused epilogues.

Activations live in row-major NHWC buffers [images·H·W, channels]. A dense block owns one buffer
[rows, n_feat + 4·growth]: conv i reads channels [0, n_feat + i·growth) and writes its own slice (no
concatenation); the fifth adds res_scale·out to the block input. The encoder runs on 2B images (IR
estimates, then denoiser estimates); its fifth conv computes both halves of a pixel and writes the 3CA
mix w⊙f_IR + (1 − w)⊙f_D straight into the decoder's buffer. The last conv adds x_IR and runs the
sampler update of kernels/sampler.py as its epilogue, so x0̂ is only stored when it is the output.

A conv is a GEMM with M = pixels, N = output channels, K = 9·C_in (tap-major, C_in zero-padded to
BLOCK_K): tl.dot with float32 accumulation on tensor cores, bf16/fp16 MMA, 3×TF32 for float32
(sampler.dot_precision).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .sampler import noise_base, update_channel

EPI_ACT, EPI_RESIDUAL, EPI_MIX = 0, 1, 2
ACTS = {"none": 0, "relu": 1, "lrelu": 2}


@triton.jit
def pixel_tile(pid, H, W, TILE_W: tl.constexpr, BLOCK_M: tl.constexpr):
    """A 2-D patch (BLOCK_M / TILE_W rows × TILE_W columns) of one image, program ``pid`` of
    images × ⌈H/rows⌉ × ⌈W/TILE_W⌉: (valid, m = image·H·W + p, image, p, y, x), int64 but m.

    Square-ish patches make the 9 taps' shifted loads overlap: a block reads its patch and a one-pixel
    halo, (rows + 2)(TILE_W + 2) pixels for BLOCK_M outputs, which the loop below reads tap after tap.
    """
    tile_h: tl.constexpr = BLOCK_M // TILE_W
    tiles_x = tl.cdiv(W, TILE_W)
    per_image = tiles_x * tl.cdiv(H, tile_h)
    img, t = pid // per_image, pid % per_image
    i = tl.arange(0, BLOCK_M)
    y = (t // tiles_x) * tile_h + i // TILE_W
    x = (t % tiles_x) * TILE_W + i % TILE_W
    p = y * W + x
    return ((y < H) & (x < W), img * H * W + p, img.to(tl.int64), p.to(tl.int64), y.to(tl.int64),
            x.to(tl.int64))


@triton.jit
def conv_acc(src, base, sc, sh, sw, y, x, m_ok, w_ptr, n, H, W, C_IN, PAD: tl.constexpr, K_CHUNKS: tl.constexpr,
             N_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             PRECISION: tl.constexpr):
    """[BLOCK_M, BLOCK_N] float32: the 3×3 conv at pixels (y, x), ``src + base`` each; PAD (fusion_net.PADS): outside
    the image zeros (0), the nearest border pixel (1), or its mirror image across the border (2; H, W ≥ 2).

    One flat loop over K = (C_in chunk, tap), so the pipeliner double-buffers one A and one W tile, and
    the 9 shifted reads of a chunk follow each other while the patch is in L1/L2.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    k = tl.arange(0, BLOCK_K).to(tl.int64)
    w_tile = w_ptr + k[:, None] * N_PAD + n[None, :]
    for kk32 in range(9 * K_CHUNKS):
        kk = tl.cast(kk32, tl.int64)
        chunk = kk // 9
        tap = kk % 9
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        ci = chunk * BLOCK_K + k
        yy = y + dy
        xx = x + dx
        if PAD == 0:
            ok = m_ok & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        else:
            ok = m_ok
            if PAD == 1:
                yy = tl.minimum(tl.maximum(yy, 0), H - 1)
                xx = tl.minimum(tl.maximum(xx, 0), W - 1)
            else:
                yy = tl.where(yy < 0, -yy, tl.where(yy >= H, 2 * H - 2 - yy, yy))
                xx = tl.where(xx < 0, -xx, tl.where(xx >= W, 2 * W - 2 - xx, xx))
        rows = base + ((yy - y) * sh + (xx - x) * sw)
        a = tl.load(src + rows[:, None] + (ci * sc)[None, :], mask=ok[:, None] & (ci < C_IN)[None, :], other=0.0)
        wt = tl.load(w_tile + (tap * K_CHUNKS + chunk) * (BLOCK_K * N_PAD))
        if PRECISION == "ieee":   # the interpreter
            acc = tl.dot(a.to(tl.float32), wt.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(wt.dtype), wt, acc, input_precision=PRECISION)
    return acc


@triton.jit
def conv3x3_kernel(src, s_b, s_c, s_h, s_w, w_ptr, bias_ptr, dst, d_row, mix_off, tw_ptr, tw_b, res_scale,
                   H, W, C_IN, C_OUT, ACT: tl.constexpr, EPI: tl.constexpr, PAD: tl.constexpr, TILE_W: tl.constexpr,
                   K_CHUNKS: tl.constexpr,
                   N_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Grid (patches (pixel_tile), cdiv(C_OUT, BLOCK_N)); dst [images·H·W, ·] rows.

    EPI_ACT: act(conv + bias). EPI_RESIDUAL: x + res_scale·(conv + bias), x = channels [0, C_OUT) of
    the input. EPI_MIX: that for image b (w) and for the image at ``mix_off`` (1 − w), w = tw[b].
    """
    m_ok, m, img, p, y, x = pixel_tile(tl.program_id(0), H, W, TILE_W, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < C_OUT
    base = img * s_b + y * s_h + x * s_w
    acc = conv_acc(src, base, s_c, s_h, s_w, y, x, m_ok, w_ptr, n, H, W, C_IN, PAD, K_CHUNKS, N_PAD, BLOCK_M,
                   BLOCK_N, BLOCK_K, PRECISION)
    bias = tl.load(bias_ptr + n)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if EPI == 0:
        out = acc + bias
        if ACT == 1:
            out = tl.maximum(out, 0.0, propagate_nan=tl.PropagateNan.ALL)   # ReLU(NaN) = NaN, as torch
        elif ACT == 2:
            out = tl.where(out >= 0.0, out, 0.2 * out)
    else:
        res = base[:, None] + (n * s_c)[None, :]
        out = tl.load(src + res, mask=mask, other=0.0).to(tl.float32) + res_scale * (acc + bias)
        if EPI == 2:
            acc = conv_acc(src, base + mix_off, s_c, s_h, s_w, y, x, m_ok, w_ptr, n, H, W, C_IN, PAD, K_CHUNKS, N_PAD,
                           BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
            f_d = tl.load(src + mix_off + res, mask=mask, other=0.0).to(tl.float32) + res_scale * (acc + bias)
            w = tl.load(tw_ptr + img[:, None] * tw_b + n[None, :], mask=mask, other=0.0)
            out = w * out + (1.0 - w) * f_d
    rows = m.to(tl.int64) * d_row
    tl.store(dst + rows[:, None] + n[None, :], out.to(dst.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["step"])
def conv_out_kernel(src, s_b, s_c, s_h, s_w, w_ptr, bias_ptr, H, W, C_IN, ir_ptr, ir_b, ir_c, ir_h, ir_w,
                    xt_ptr, xt_b, xt_c, xt_h, xt_w, out_ptr, den_ptr, den_b, den_c, den_w, key_ptr,
                    a, b, sigma, den_scale, den_level, step, C: tl.constexpr,
                    RESIDUAL: tl.constexpr, HAS_XT: tl.constexpr, NOISE: tl.constexpr, WRITE_DEN: tl.constexpr,
                    PAD: tl.constexpr, TILE_W: tl.constexpr, K_CHUNKS: tl.constexpr, N_PAD: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """Grid (patches of B images (pixel_tile),): x0̂ = conv + bias (+ x_IR), x_next = a·x0̂ + b·x_t + σ·z.

    x_next goes to ``out`` [B, C, H, W] float32; with WRITE_DEN the denoiser input [B, C + 1, H, W] too.
    """
    m_ok, m, img, p, y, x = pixel_tile(tl.program_id(0), H, W, TILE_W, BLOCK_M)
    n = tl.arange(0, BLOCK_N)
    acc = conv_acc(src, img * s_b + y * s_h + x * s_w, s_c, s_h, s_w, y, x, m_ok, w_ptr, n, H, W, C_IN, PAD, K_CHUNKS,
                   N_PAD, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    seed, noise_off, plane = noise_base(key_ptr, img, y, x, step, m_ok)
    den_off = img * den_b + p * den_w
    for c in tl.static_range(C):
        x0 = tl.sum(tl.where(n[None, :] == c, acc, 0.0), axis=1) + tl.load(bias_ptr + c)
        if RESIDUAL:
            x0 += tl.load(ir_ptr + img * ir_b + c * ir_c + y * ir_h + x * ir_w, mask=m_ok, other=0.0).to(tl.float32)
        update_channel(x0, c, m_ok, seed, noise_off, plane, xt_ptr, img * xt_b + y * xt_h + x * xt_w, xt_c,
                       out_ptr, img * C * H * W + p, H * W, den_ptr, den_off, den_c, a, b, sigma, den_scale,
                       HAS_XT, NOISE, WRITE_DEN)
    if WRITE_DEN:
        level = den_level + tl.zeros([BLOCK_M], tl.float32)
        tl.store(den_ptr + den_off + C * den_c, level.to(den_ptr.dtype.element_ty), mask=m_ok)
