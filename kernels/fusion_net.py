"""Host side of the fused FusionNet: weight packing and the launch sequence of kernels/fusion.py.

Users pass the ordinary ``models.FusionNet``; its convolutions are packed once per (dtype, device) into
[9·K_PAD, N_PAD] GEMM operands and cached against the parameters' storage and version counters, so an
optimiser step or ``load_state_dict`` repacks and nothing else does.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton

from dpir_fast._backend import interpreting
from dpir_fast.engine import versions
from dpir_fast.models.fusion import PADDINGS, DenseBlock, FusionNet

from .fusion import ACTS, EPI_ACT, EPI_MIX, EPI_RESIDUAL, conv3x3_kernel, conv_out_kernel
from .sampler import (check_den, check_extent, check_grid, check_out, check_rows, dot_precision,
                      key_tensor, on_tensor_device)

# Pixel tile per conv: the mix conv holds two accumulators, and IEEE float32 dots (CUDA-core FMA) hold
# their operands in registers, so both take smaller tiles (sizes checked against ptxas for sm_80/sm_90).
BLOCK_M, BLOCK_M_MIX = 128, 64
PADS = {name: code for code, name in enumerate(PADDINGS)}   # conv_acc's PAD
PATCH_W = 16   # a block's pixels are a patch 16 wide (fewer at narrow images): 8 rows × 16 at BLOCK_M = 128
# The interpreter pays per operation, not per element: whole-batch tiles and one K chunk there, unless a
# test asks for the GPU's tiling (to cover the chunk loop and tile edges).
INTERPRETER_TILES = True
MAX_BLOCK_N = 128
_CACHE: "weakref.WeakKeyDictionary[FusionNet, dict]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PackedConv:
    weight: torch.Tensor     # [9·k_chunks·block_k, n_pad], compute dtype, zero-padded
    bias: torch.Tensor       # [n_pad] float32
    c_in: int
    c_out: int
    block_k: int
    block_n: int

    @property
    def k_chunks(self) -> int:
        return self.weight.shape[0] // (9 * self.block_k)


def _big_tiles() -> bool:
    return INTERPRETER_TILES and interpreting()


def pack_conv(conv: torch.nn.Conv2d, dtype: torch.dtype, max_block_n: int | None = None) -> PackedConv:
    """A 3×3 conv's weight [N, C_in, 3, 3] as the GEMM operand W[(tap, c_in), n], tap = 3·ky + kx."""
    weight = conv.weight.detach()
    c_out, c_in = weight.shape[:2]
    block_k = max(16, triton.next_power_of_2(c_in)) if _big_tiles() else 16 if c_in <= 16 else 32
    k_pad = triton.cdiv(c_in, block_k) * block_k
    block_n = min(max(16, triton.next_power_of_2(c_out)), max_block_n or MAX_BLOCK_N)
    n_pad = triton.cdiv(c_out, block_n) * block_n
    packed = torch.zeros(9, k_pad, n_pad, dtype=dtype, device=weight.device)
    packed[:, :c_in, :c_out] = weight.permute(2, 3, 1, 0).reshape(9, c_in, c_out)
    bias = torch.zeros(n_pad, dtype=torch.float32, device=weight.device)
    bias[:c_out] = conv.bias.detach()
    return PackedConv(packed.reshape(9 * k_pad, n_pad), bias, c_in, c_out, block_k, block_n)


def is_fusion_net(net) -> bool:
    """Whether ``net`` computes ``models.FusionNet``'s forward (a subclass overriding it is a user module)."""
    return isinstance(net, FusionNet) and type(net).forward is FusionNet.forward


def unsupported_reason(net: FusionNet) -> str | None:
    """Why this FusionNet cannot run fused (None when it can)."""
    if not is_fusion_net(net):
        return f"{type(net).__name__} is not a dpir_fast.models.FusionNet (or overrides its forward)"
    blocks = [net.encoder, *net.decoder]
    if any(type(block).forward is not DenseBlock.forward for block in blocks):
        return "a dense block overrides DenseBlock.forward"
    if net.config["act"] not in ACTS:
        return f"activation {net.config['act']!r} has no fused epilogue (supported: relu, lrelu)"
    convs = [net.conv_in, net.conv_out, *(c for block in blocks for c in block.convs)]
    if any(c.kernel_size != (3, 3) or c.padding != (1, 1) or c.stride != (1, 1) or c.dilation != (1, 1)
           or c.groups != 1 or c.bias is None or c.padding_mode != net.config["padding"] for c in convs):
        return ("the fused FusionNet takes 3×3 convolutions with padding 1 (in the net's padding mode), stride 1 "
                "and a bias")
    return None


def packed_fusion(net: FusionNet, dtype: torch.dtype) -> dict:
    """{conv_in, blocks: [[5 PackedConv] per dense block], conv_out}, cached per module and versions."""
    reason = unsupported_reason(net)
    if reason:
        raise ValueError(f"cannot fuse this FusionNet: {reason}")
    params = list(net.parameters())
    version = versions(params)
    per_module = _CACHE.setdefault(net, {})
    key = (dtype, params[0].device, _big_tiles(), MAX_BLOCK_N)
    if key not in per_module or per_module[key][0] != version:
        blocks = [[pack_conv(c, dtype) for c in block.convs] for block in [net.encoder, *net.decoder]]
        per_module[key] = (version, {"conv_in": pack_conv(net.conv_in, dtype), "blocks": blocks,
                                     "conv_out": pack_conv(net.conv_out, dtype, max_block_n=1 << 30)})
    return per_module[key][1]


def _patch(size, mix: bool, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_M, TILE_W): pixels of a block and the width of its patch (fusion.pixel_tile)."""
    height, width = size
    if _big_tiles():   # one patch per image
        tile_w = min(triton.next_power_of_2(width), 1 << 12)
        return min(tile_w * triton.next_power_of_2(height), 1 << 12), tile_w
    block_m = (BLOCK_M_MIX if mix else BLOCK_M) // (2 if dtype == torch.float32 else 1)
    return block_m, min(PATCH_W, triton.next_power_of_2(width))


def _patches(images: int, size, block_m: int, tile_w: int) -> int:
    """Programs over ``images`` images in patches of block_m pixels, tile_w wide."""
    height, width = size
    return check_grid(images * triton.cdiv(height, block_m // tile_w) * triton.cdiv(width, tile_w))


def _conv(pc: PackedConv, src, strides, dst: torch.Tensor, images: int, size, pad: int, act: int = 0,
          epi: int = EPI_ACT, res_scale: float = 0.0, mix_off: int = 0, tw: torch.Tensor | None = None):
    """conv3x3_kernel over ``images`` images of ``size``; dst: a [rows, channels] view (row stride)."""
    height, width = size
    block_m, tile_w = _patch(size, epi == EPI_MIX, pc.weight.dtype)
    grid = (_patches(images, size, block_m, tile_w), triton.cdiv(pc.c_out, pc.block_n))
    tw_b = tw.stride(0) if tw is not None and tw.shape[0] > 1 else 0
    conv3x3_kernel[grid](src, *strides, pc.weight, pc.bias, dst, dst.stride(0), mix_off,
                         tw if tw is not None else pc.bias, tw_b, res_scale, height, width, pc.c_in, pc.c_out,
                         ACT=act, EPI=epi, PAD=pad, TILE_W=tile_w, K_CHUNKS=pc.k_chunks, N_PAD=pc.weight.shape[1],
                         BLOCK_M=block_m, BLOCK_N=pc.block_n, BLOCK_K=pc.block_k,
                         PRECISION=dot_precision(pc.weight.dtype), num_warps=4, num_stages=3)


@on_tensor_device
def fusion_forward(net: FusionNet, x_ir: torch.Tensor, x_den: torch.Tensor, weights: torch.Tensor,
                   dtype: torch.dtype, seeds, x_t: torch.Tensor | None = None, a: float = 1.0,
                   b: float = 0.0, sigma: float = 0.0, step: int = 0, den_scale: float = 1.0,
                   den_level: float = 0.0, full_size=None, origin=(0, 0), den_dtype: torch.dtype | None = None,
                   den_channels_last: bool = False, out: torch.Tensor | None = None,
                   den_out: torch.Tensor | None = None):
    """x_next = a·FusionNet(x_IR, x_den) + b·x_t + σ·z [B, C, H, W] float32 (a = 1, b = σ = 0: x0̂ itself).

    x_ir, x_den: [B, C, H, W] any float dtype and strides; weights: the 3CA weights [1 or B, n_feat]
    float32; seeds: see ``sampler.key_tensor``. With ``den_dtype`` also returns the next denoiser input
    [B, C + 1, H, W]. ``out`` / ``den_out``: buffers to write into (``out`` may be x_t itself).
    """
    batch, channels, height, width = x_ir.shape
    if x_den.shape != x_ir.shape or (x_t is not None and x_t.shape != x_ir.shape):
        raise ValueError(f"FusionNet needs x_IR, x_den (and x_t) of one shape, got {tuple(x_ir.shape)}, "
                         f"{tuple(x_den.shape)}" + (f", {tuple(x_t.shape)}" if x_t is not None else ""))
    if channels != net.config["in_channels"]:
        raise ValueError(f"this FusionNet takes {net.config['in_channels']} channels, got {channels}")
    if weights.shape not in ((1, net.config["n_feat"]), (batch, net.config["n_feat"])):
        raise ValueError(f"the 3CA weights are [1 or {batch}, {net.config['n_feat']}], got {tuple(weights.shape)}")
    weights = weights.to(x_ir.device, torch.float32).contiguous()
    keys = key_tensor(seeds, x_ir.shape, full_size, origin, x_ir.device)
    packed = packed_fusion(net, dtype)
    size, hw = (height, width), height * width
    n_feat, growth = net.config["n_feat"], net.config["growth"]
    act, width_buf = ACTS[net.config["act"]], n_feat + 4 * growth
    pad = PADS[net.config["padding"]]
    if pad == PADS["reflect"] and min(height, width) < 2:
        raise ValueError(f"reflect padding needs images of at least 2×2 pixels, got {height}×{width}")
    nhwc = (hw * width_buf, 1, width * width_buf, width_buf)
    check_rows(2 * batch * hw)   # the encoder's 2B images, the most rows
    enc = torch.empty(2 * batch * hw, width_buf, dtype=dtype, device=x_ir.device)
    decs = [torch.empty(batch * hw, width_buf, dtype=dtype, device=x_ir.device)
            for _ in range(min(2, len(net.decoder) + 1))]
    for half, x in enumerate((check_extent(x_ir), check_extent(x_den))):
        _conv(packed["conv_in"], x, x.stride(), enc[half * batch * hw:], batch, size, pad)
    for j, (block, module) in enumerate(zip(packed["blocks"], [net.encoder, *net.decoder])):
        buf = enc if j == 0 else decs[(j - 1) % 2]
        images = 2 * batch if j == 0 else batch
        for i, pc in enumerate(block[:4]):
            _conv(pc, buf, nhwc, buf[:, n_feat + i * growth:], images, size, pad, act)
        if j == 0:
            _conv(block[4], buf, nhwc, decs[0], batch, size, pad, epi=EPI_MIX, res_scale=module.res_scale,
                  mix_off=batch * hw * width_buf, tw=weights)
        else:
            _conv(block[4], buf, nhwc, decs[j % 2], batch, size, pad, epi=EPI_RESIDUAL, res_scale=module.res_scale)
    src = decs[len(net.decoder) % 2]
    out = check_out(out, x_ir.shape, torch.float32, x_ir.device)
    den = check_den(den_out, x_ir.shape, den_dtype, den_channels_last, x_ir.device) if den_dtype is not None else out
    has_xt = x_t is not None and b != 0
    xt = check_extent(x_t) if has_xt else out
    pc = packed["conv_out"]
    block_m, tile_w = _patch(size, False, dtype)
    conv_out_kernel[(_patches(batch, size, block_m, tile_w),)](
        src, *nhwc, pc.weight, pc.bias, height, width, pc.c_in, x_ir, *x_ir.stride(), xt, *xt.stride(), out,
        den, den.stride(0), den.stride(1), den.stride(3), keys, a, b, sigma, den_scale, den_level, step,
        C=channels, RESIDUAL=net.config["residual"] == "ir", HAS_XT=has_xt,
        NOISE=sigma > 0, WRITE_DEN=den_dtype is not None, PAD=pad, TILE_W=tile_w, K_CHUNKS=pc.k_chunks,
        N_PAD=pc.weight.shape[1], BLOCK_M=block_m, BLOCK_N=pc.block_n, BLOCK_K=pc.block_k,
        PRECISION=dot_precision(dtype), num_warps=4, num_stages=3)
    return (out, den) if den_dtype is not None else out
