"""Roofline model of the fused kernels at the microbenchmarks' shapes (DESIGN.md §4): a model, not a measurement.

    python benchmarks/roofline.py [--device h200|h100] [--dtype bf16|fp16|fp32] [--out PATH]

Per kernel launch: the bytes it must move to/from DRAM (each tensor it reads or writes counted once; small per-image
vectors and weights, which stay in L2, counted once) and its FLOPs; its floor is max(bytes / bandwidth, tensor-core
FLOPs / tensor-core peak, CUDA-core FLOPs / FMA peak). An op's floor is the sum over its launches. GEMMs run on tensor
cores: bf16/fp16 MMA, fp32 as 3×TF32 (three TF32 products counted against the TF32 peak). Prints a markdown table
and writes it to benchmarks/results/roofline_<device>[_<dtype>].md (another GPU: a DEVICES entry); the
microbenchmarks set their measured times against these floors ("of floor") on a GPU listed here.
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path

SIZE = {"bf16": 2, "fp16": 2, "fp32": 4}
F32 = 4
SMS = 132   # H100/H200 SXM: pass 1 of dau_tail/skff runs ~4 blocks per SM (cuda_utils.cuh plan_reduce)


@dataclass(frozen=True)
class Device:
    """Peak rates of a GPU: DRAM bytes/s, dense tensor-core FLOP/s per operand type, CUDA-core fp32 FMA FLOP/s."""
    name: str
    bandwidth: float
    bf16: float
    fp16: float
    tf32: float
    fp32: float
    source: str

    def mma_peak(self, dtype: str) -> float:
        return {"bf16": self.bf16, "fp16": self.fp16, "fp32": self.tf32, "tf32": self.tf32}[dtype]

    def describe(self) -> str:
        return (f"{self.name} ({self.source}): DRAM {self.bandwidth / 1e12:.3g} TB/s; dense tensor cores bf16/fp16 "
                f"{self.bf16 / 1e12:.0f} / {self.fp16 / 1e12:.0f}, TF32 {self.tf32 / 1e12:.0f} TFLOP/s; "
                f"fp32 CUDA-core FMA {self.fp32 / 1e12:.0f} TFLOP/s")


DEVICES = {
    "h200": Device("NVIDIA H200 SXM", 4.8e12, 989e12, 989e12, 494e12, 67e12, "NVIDIA H200 datasheet"),
    "h100": Device("NVIDIA H100 SXM", 3.35e12, 989e12, 989e12, 494e12, 67e12, "NVIDIA H100 datasheet"),
}


@dataclass(frozen=True)
class Launch:
    """One kernel launch: DRAM bytes, CUDA-core FLOPs and tensor-core FLOPs (2·M·N·K) with operands in ``dtype``
    (fp32: 3×TF32 products; "tf32": one TF32 product, PyTorch's default for fp32 convolutions)."""
    name: str
    bytes: float
    flops: float = 0.0
    mma_flops: float = 0.0
    dtype: str = "bf16"

    def times(self, dev: Device) -> tuple[float, float]:
        """(memory, compute) seconds."""
        mma = self.mma_flops * (3 if self.dtype == "fp32" else 1) / dev.mma_peak(self.dtype)   # tf32: one pass
        return self.bytes / dev.bandwidth, max(mma, self.flops / dev.fp32)


@dataclass(frozen=True)
class Op:
    """A row of the table: one op (or one FusionNet conv) as its launches."""
    kernel: str
    shape: str
    launches: tuple[Launch, ...]

    @property
    def bytes(self) -> float:
        return sum(k.bytes for k in self.launches)

    @property
    def flops(self) -> float:
        return sum(k.flops + k.mma_flops for k in self.launches)

    def floor_s(self, dev: Device) -> float:
        return sum(max(k.times(dev)) for k in self.launches)

    def bound(self, dev: Device) -> str:
        """What binds most of the floor, memory or compute (with the compute-bound share when launches differ)."""
        share = sum(c for m, c in (k.times(dev) for k in self.launches) if c > m) / self.floor_s(dev)
        kind = "compute" if share >= 0.5 else "memory"
        return f"{kind} ({100 * share:.0f}% compute-bound)" if 0.01 < share < 0.99 else kind


def merge(kernel: str, shape: str, ops: list[Op]) -> Op:
    """All launches of ``ops`` as one row (a FusionNet forward): floors add up."""
    return Op(kernel, shape, tuple(k for o in ops for k in o.launches))


def dtype_name(dtype) -> str:
    """'bf16' | 'fp16' | 'fp32' of a torch dtype or of one of those names."""
    name = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))
    if name not in SIZE:
        raise ValueError(f"no roofline model for dtype {dtype}")
    return name


def _shape(*dims) -> str:
    return "x".join(map(str, dims))


def _tiles(batch: int, hw: int) -> int:
    return max(1, min(math.ceil(4 * SMS / batch), math.ceil(hw / 32)))


def dau_tail(batch: int, channels: int, height: int, width: int, dtype="bf16", tiles: int | None = None) -> Op:
    """The fused dau_tail (new design, 4 launches).

    Assumes: pass 1 reads r, writes pooled [B,2,HW] and partial sums [B,tiles,C] fp32; spatial attention reads pooled
    and w_sa [2,5,5] fp32, writes s_sp [B,HW] fp32; the fold (channel attention + W₂·diag(s_ch)) reads the partials
    and the fp32 weights (w_ca_down [C/8,C], w_ca_up [C,C/8], w_out [C,2C]), writes W' [B,C,2C] in the compute
    dtype; the output GEMM reads r, x, s_sp, W' once (r not re-read per output-channel tile), writes out; FLOPs =
    GEMM 2·B·HW·C·2C on tensor cores + 5×5 conv 2·2·25·B·HW + epilogue 3·B·C·HW on CUDA cores (pass-1 reductions
    and the per-image MLP left out).
    """
    d = dtype_name(dtype)
    s, hw, c, cr = SIZE[d], height * width, channels, max(1, channels // 8)
    n, plane, partials = batch * c * hw, batch * hw, batch * (tiles or _tiles(batch, hw)) * c * F32
    return Op("dau_tail", f"{_shape(batch, c, height, width)} {d}", (
        Launch("pass 1", n * s + 2 * plane * F32 + partials, dtype=d),
        Launch("spatial attention", 2 * plane * F32 + 50 * F32 + plane * F32, 2 * 2 * 25 * plane, dtype=d),
        Launch("fold", partials + (2 * cr * c + 2 * c * c) * F32 + batch * c * 2 * c * s, dtype=d),
        Launch("GEMM", 3 * n * s + plane * F32 + batch * c * 2 * c * s, 3 * n, 2 * plane * c * 2 * c, d)))


def dau_tail_ref(batch: int, channels: int, height: int, width: int, dtype="bf16") -> Op:
    """The eager reference of dau_tail (reference/dau_tail.py), one launch per PyTorch op.

    Assumes: every op reads its inputs and writes its output once in the compute dtype (a broadcast operand counted
    once, weights in that dtype); reductions and elementwise ops 1 FLOP per element read or written; the 1×1 conv
    on tensor cores (fp32 as one TF32 pass, cuDNN's default); cuDNN's layout transforms and workspaces not counted.
    """
    d = dtype_name(dtype)
    s, hw, c, cr = SIZE[d], height * width, channels, max(1, channels // 8)
    n, p, v, h = batch * c * hw, batch * hw, batch * c, batch * cr
    eager = [  # (op, elements read, elements written, CUDA-core FLOPs, tensor-core FLOPs)
        ("amax_C r", n, p, n, 0), ("mean_C r", n, p, n, 0), ("cat pooled", 2 * p, 2 * p, 0, 0),
        ("conv5x5", 2 * p + 50, p, 100 * p, 0), ("sigmoid", p, p, p, 0), ("r * s_sp", n + p, n, n, 0),
        ("mean_HW r", n, v, n, 0), ("conv down", v + cr * c, h, 2 * h * c, 0), ("relu", h, h, h, 0),
        ("conv up", h + c * cr, v, 2 * v * cr, 0), ("sigmoid", v, v, v, 0), ("r * s_ch", n + v, n, n, 0),
        ("cat [sa, ca]", 2 * n, 2 * n, 0, 0), ("conv1x1 out", 2 * n + 2 * c * c, n, 0, 2 * p * c * 2 * c),
        ("x + conv", 2 * n, n, n, 0)]
    return Op("dau_tail reference (eager)", f"{_shape(batch, c, height, width)} {d}",
              tuple(Launch(name, (r + w) * s, f, m, "tf32" if d == "fp32" else d) for name, r, w, f, m in eager))


def skff(batch: int, channels: int, height: int, width: int, dtype="bf16", tiles: int | None = None) -> Op:
    """The fused skff (3 launches).

    Assumes: pass 1 reads the three inputs, writes partial sums [B,tiles,C] fp32; the attention launch reads them and
    the fp32 MLP weights (d = max(C/8, 4)), writes a [B,3,C] fp32; pass 2 reads the three inputs and a, writes out;
    FLOPs 3 per element of pass 1 (x0 + x1 + x2 and the sum) and 5 per element of pass 2, on CUDA cores.
    """
    d = dtype_name(dtype)
    s, hw, c, red = SIZE[d], height * width, channels, max(channels // 8, 4)
    n, partials, attn = batch * c * hw, batch * (tiles or _tiles(batch, hw)) * c * F32, batch * 3 * c * F32
    return Op("skff", f"3x {_shape(batch, c, height, width)} {d}", (
        Launch("pass 1", 3 * n * s + partials, 3 * n, dtype=d),
        Launch("attention", partials + (4 * red * c + 1) * F32 + attn, dtype=d),
        Launch("pass 2", 3 * n * s + attn + n * s, 5 * n, dtype=d)))


def sampler_update(kernel: str, batch: int, channels: int, height: int, width: int, dtype="bf16",
                   x_t: bool = True, den_dtype=None) -> Op:
    """A sampler update (kernels/sampler.py affine_update), noise drawn in-kernel.

    Assumes: reads x0̂ in ``dtype``, x_t fp32 (not for the jump) and the noise keys [B,4] int64; writes x_next fp32
    and the denoiser input [B,C+1,H,W] in ``den_dtype``; FLOPs 2 per term (a·x0̂, b·x_t, σ·z) + 1 (den scale) per
    element; the Philox draws and Box–Muller (integer and SFU work) left out.
    """
    d, dd = dtype_name(dtype), dtype_name(den_dtype or dtype)
    n, hw = batch * channels * height * width, height * width
    reads = n * SIZE[d] + (n * F32 if x_t else 0) + batch * 4 * 8
    writes = n * F32 + batch * (channels + 1) * hw * SIZE[dd]
    return Op(kernel, f"{_shape(batch, channels, height, width)} {d}",
              (Launch(kernel, reads + writes, n * (7 if x_t else 5), dtype=d),))


def fusion_net(net, batch: int, height: int, width: int, dtype="bf16", update: bool = True,
               den_dtype=None) -> list[Op]:
    """Every convolution of the fused FusionNet forward (kernels/fusion_net.py), one row each.

    Assumes: conv = GEMM M = pixels, N = C_out, K = 9·C_in, 2·M·N·K on tensor cores; it reads its input channels once
    (halo/tap reuse on chip) and writes its output channels, in the compute dtype, plus its weights [9·C_in, N] once;
    conv_in reads x_IR fp32 and x_den in the compute dtype (two launches, B images each); the mix conv computes both
    halves (2B images) and writes B; conv_out reads x_IR fp32 (residual) and, with the update, x_t fp32, writes x_next
    fp32 and the denoiser input [B,C+1,H,W]; without it writes x0̂ fp32 only.
    """
    d = dtype_name(dtype)
    s, hw, cfg = SIZE[d], height * width, net.config
    n_feat, c_img = cfg["n_feat"], cfg["in_channels"]

    def launch(name, conv, images, reads, writes):
        m, n, k = images * hw, conv.out_channels, 9 * conv.in_channels
        weights = k * n * s + n * F32
        return Launch(name, reads + writes + weights, mma_flops=2 * m * n * k, dtype=d)

    def row(name, conv, images, *launches):
        return Op(name, f"{images}x{conv.in_channels}x{height}x{width} → {conv.out_channels} {d}", launches)

    def dense(tag, block, images, out_images):
        rows = []
        for i, conv in enumerate(block.convs):
            last = i == len(block.convs) - 1
            writes = (out_images if last else images) * hw * conv.out_channels * s
            rows.append(row(f"{tag}.conv{i}" + (" + 3CA mix" if last and out_images != images else
                                                 " + residual" if last else ""), conv, images,
                            launch(tag, conv, images, images * hw * conv.in_channels * s, writes)))
        return rows

    conv_in = net.conv_in
    rows = [row("conv_in", conv_in, 2 * batch,
                *(launch(f"conv_in {src}", conv_in, batch, batch * hw * c_img * size, batch * hw * n_feat * s)
                  for src, size in (("x_IR", F32), ("x_den", s))))]
    rows += dense("enc", net.encoder, 2 * batch, batch)
    for j, block in enumerate(net.decoder):
        rows += dense(f"dec{j}", block, batch, batch)
    out = net.conv_out
    den = batch * (c_img + 1) * hw * SIZE[dtype_name(den_dtype or d)] if update else 0
    reads = batch * hw * out.in_channels * s + batch * hw * c_img * F32 * ((cfg["residual"] == "ir") + update)
    rows.append(row("conv_out + update" if update else "conv_out", out, batch,
                    launch("conv_out", out, batch, reads, batch * hw * c_img * F32 + den)))
    return rows


def cuda_device(name: str) -> Device | None:
    """The DEVICES entry of a CUDA device name (torch.cuda.get_device_name), None for a GPU not listed."""
    name = name.upper()
    if "H200" in name:
        return DEVICES["h200"]
    if "H100" in name and "PCIE" not in name and "NVL" not in name:
        return DEVICES["h100"]
    return None


def of_floor(op: Op | None, device, measured_ms: float) -> float | None:
    """floor / measured time of ``op`` on the CUDA ``device`` (None off CUDA, without a model or device entry)."""
    import torch
    device = torch.device(device)
    dev = cuda_device(torch.cuda.get_device_name(device)) if device.type == "cuda" and op else None
    return dev and op.floor_s(dev) * 1e3 / measured_ms


def benchmark_ops(dtype: str) -> list[Op]:
    """The rows of the table, at the shapes the microbenchmarks time (their constants)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from bench_dau import GPU_SHAPES as SHAPES
    from bench_fusion import SHAPE as FUSION
    from bench_sampler import SHAPE as SAMPLER

    from dpir_fast.models import FusionNet

    ops = [f(*shape, dtype) for shape in SHAPES for f in (dau_tail, dau_tail_ref)]
    ops += [skff(*shape, dtype) for shape in SHAPES]
    ops += [sampler_update(k, *SAMPLER, dtype, x_t=k != "jump") for k in ("jump", "ancestral_step", "ddim_step")]
    net, (batch, _, height, width), shape = FusionNet(), FUSION, f"{_shape(*FUSION)} {dtype}"
    convs = fusion_net(net, batch, height, width, dtype, update=True)
    ops += convs + [merge("FusionNet step (fusion_step: update + den)", shape, convs),
                    merge("FusionNet x0̂ (fusion)", shape, fusion_net(net, batch, height, width, dtype, update=False))]
    return ops


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 1000 else f"{v:.3g}"


def table(ops: list[Op], dev: Device) -> list[str]:
    lines = ["| kernel | shape | MB moved | GFLOP | FLOP/B | floor µs | bound |", "|---|---|---:|---:|---:|---:|---|"]
    for op in ops:
        lines.append(f"| {op.kernel} | {op.shape} | {_num(op.bytes / 1e6)} | {_num(op.flops / 1e9)} | "
                     f"{_num(op.flops / op.bytes)} | {_num(op.floor_s(dev) * 1e6)} | {op.bound(dev)} |")
    return lines


def assumptions() -> list[str]:
    lines = []
    for fn in (dau_tail, dau_tail_ref, skff, sampler_update, fusion_net):
        doc = inspect.getdoc(fn)
        lines.append(f"- `{fn.__name__}`: " + " ".join(doc[doc.index("Assumes:") + len("Assumes:"):].split()))
    return lines


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=sorted(DEVICES), default="h200")
    p.add_argument("--dtype", choices=sorted(SIZE), default="bf16")
    p.add_argument("--out", type=Path, help="markdown file (default benchmarks/results/roofline_<device>[_<dtype>].md)")
    args = p.parse_args(argv)
    dev = DEVICES[args.device]
    out = args.out or Path(__file__).resolve().parent / "results" / (
        f"roofline_{args.device}" + ("" if args.dtype == "bf16" else f"_{args.dtype}") + ".md")
    text = [f"# Roofline floors, {args.dtype}, {dev.name}", "",
            f"A model, not a measurement (benchmarks/roofline.py): {dev.describe()}. Floor per launch = "
            "max(bytes / bandwidth, FLOPs / peak); an op's floor is the sum over its launches; fp32 GEMMs as 3×TF32. "
            "Shapes: the microbenchmarks' (bench_dau/bench_skff SHAPES, bench_sampler.SHAPE, bench_fusion.SHAPE with "
            "the default FusionNet). MB = 10⁶ bytes.", "", *table(benchmark_ops(args.dtype), dev), "", "Assumptions:",
            *assumptions()]
    print("\n".join(text))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    print(f"\nwrote {out}")
    return out


if __name__ == "__main__":
    main()
