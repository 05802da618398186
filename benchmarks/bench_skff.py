"""Microbenchmark of ``skff``: the fused op of dpir_fast._C vs the eager SKFF module (its reference path).

    python benchmarks/bench_skff.py [--device cpu|cuda] [--repeats N] [--no-history]

Same cases and table as bench_dau.py (three streams of each shape); GB/s on CUDA counts the fused op's traffic:
the three streams read twice (sums, weighted sum) and the output written once.
"""
from __future__ import annotations

import torch

import roofline
from _common import copy_bandwidth
from bench_dau import SHAPES, parse, run, variants
from dpir_fast import ops
from dpir_fast.models.mirnet import SKFF


def skff_cases(device: torch.device) -> list:
    cases = []
    for (B, C, H, W) in SHAPES:
        torch.manual_seed(0)
        for dtype, fmt in variants(device):
            skff = SKFF(C).to(device, dtype).eval()
            feats = [torch.randn(B, C, H, W, device=device, dtype=dtype).contiguous(memory_format=fmt)
                     for _ in range(3)]
            weights = (skff.conv_du[0].weight, skff.conv_du[1].weight, [fc.weight for fc in skff.fcs])
            label = f"{B}x{C}x{H}x{W} {str(dtype)[6:]}" + (" channels_last" if fmt == torch.channels_last else "")
            skff.backend = "reference"
            cases.append((label, lambda skff=skff, f=feats: skff(f),
                          lambda f=feats, w=weights: ops.skff(f, *w, backend="ext"),
                          7 * feats[0].numel() * feats[0].element_size(), roofline.skff(B, C, H, W, dtype)))
    return cases


if __name__ == "__main__":
    args = parse(__doc__)
    dev = torch.device(args.device)
    run("bench_skff", skff_cases(dev), args, copy_bandwidth(dev) if dev.type == "cuda" else None)
