"""Microbenchmark of ``fusion`` / ``fusion_step``: the fused Triton FusionNet vs models.FusionNet, eager.

    python benchmarks/bench_fusion.py [--device cpu|cuda] [--repeats N] [--no-history]

CUDA: the default FusionNet (0.73 M parameters) at batch 8×3×256×256. The reference is the module in bfloat16,
channels_last, eager; the fused op runs its bfloat16 implicit-GEMM convolutions (float32 accumulation), alone
(x0̂) and with the sampler update and the next denoiser input in its last convolution (what the engine runs).
TFLOP/s counts the convolutions' 2·MACs; the target is ≥ 1.5× the reference. "of floor": roofline.py's floor (the
sum over the launches) / the measured time, on a GPU it lists.
Without a GPU: a correctness smoke through TRITON_INTERPRET=1 on a small CPU case; timings need a GPU.
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before Triton is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_dau import parse  # noqa: E402
from bench_sampler import compare, smoke_report  # noqa: E402
import roofline  # noqa: E402

from dpir_fast import ops  # noqa: E402
from dpir_fast.models import FusionNet  # noqa: E402
from dpir_fast.reference import ancestral_update  # noqa: E402
from dpir_fast.schedule import Schedule  # noqa: E402


SHAPE = (8, 3, 256, 256)   # the CUDA cases' [B, C, H, W], default FusionNet (roofline.py models this shape)


def conv_flops(net: FusionNet, batch: int, height: int, width: int) -> int:
    """2·MACs of FusionNet's convolutions (the encoder runs on both estimates)."""
    def macs(convs):
        return sum(9 * c.in_channels * c.out_channels for c in convs)
    encoder = macs([net.conv_in, *net.encoder.convs])
    decoder = macs([c for block in net.decoder for c in block.convs] + [net.conv_out])
    return 2 * batch * height * width * (2 * encoder + decoder)


def setup(device, shape, dtype, **config):
    torch.manual_seed(0)
    net = FusionNet(**config).to(device).eval()
    x_ir = torch.rand(shape, device=device)
    x_den = (x_ir + 0.05 * torch.randn_like(x_ir)).to(dtype).contiguous(memory_format=torch.channels_last)
    return net, x_ir, x_den


def cuda_cases(device, shape=SHAPE):
    dtype = torch.bfloat16
    net, x_ir, x_den = setup(device, shape, dtype)
    ref = copy.deepcopy(net).to(dtype, memory_format=torch.channels_last)
    x_ir_low = x_ir.to(dtype).contiguous(memory_format=torch.channels_last)
    x_t, update, seeds = torch.randn_like(x_ir), ancestral_update(Schedule.linear(), 3), [0] * shape[0]
    weights = ops.fusion_time_weights(net, [3])
    flops, label = conv_flops(net, *shape[:1], *shape[2:]), "x".join(map(str, shape))
    floors = [roofline.merge(f"fusion {label}", label, roofline.fusion_net(net, shape[0], *shape[2:], dtype, update))
              for update in (False, True)]
    return [(f"fusion {label} bf16", lambda: ref(x_ir_low, x_den, 3),
             lambda: ops.fusion(net, x_ir, x_den, 3, weights, dtype, backend="triton"), flops, floors[0]),
            (f"fusion_step (update + den) {label} bf16", lambda: ref(x_ir_low, x_den, 3),
             lambda: ops.fusion_step(net, x_ir, x_den, 3, x_t, update, seeds, weights, dtype, den_dtype=dtype,
                                     den_channels_last=True, backend="triton"), flops, floors[1])]


@torch.no_grad()
def cpu_smoke(args) -> None:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        net, x_ir, x_den = setup("cpu", (2, 3, 13, 11), dtype, n_feat=16, growth=8)
        fast = ops.fusion(net, x_ir, x_den, 250, dtype=dtype, backend="triton")
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            ref = net(x_ir, x_den.to(x_ir.dtype) if dtype == torch.float32 else x_den, 250)
        rows.append({"benchmark": "bench_fusion", "case": f"fusion n_feat=16 growth=8 2x3x13x11 {str(dtype)[6:]}",
                     "backend": "triton-interpret", "metric": "max_abs_err vs module",
                     "value": f"{(fast - ref.float()).abs().max().item():.2e}"})
    smoke_report("bench_fusion", rows, args)


if __name__ == "__main__":
    args = parse(__doc__)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        compare("bench_fusion", cuda_cases(dev), args, "TFLOP/s", target="≥ 1.5× the reference (bf16 channels_last)")
    else:
        cpu_smoke(args)
