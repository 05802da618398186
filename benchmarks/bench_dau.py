"""Microbenchmark of ``dau_tail``: the fused op of dpir_fast._C vs the eager DAU tail (its reference path).

    python benchmarks/bench_dau.py [--device cpu|cuda] [--repeats N] [--no-history]

CPU (the default without a GPU): float32 at MIRNet's three levels, the first being the target case 4×64×128×128.
CUDA: float32/bfloat16, NCHW/channels_last, and achieved GB/s against the device's measured copy bandwidth; on a
GPU roofline.py lists, "of floor" = its modelled floor / the measured time.
The runner here (``run``) also serves bench_skff.py and bench_mirnet.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import append_history, copy_bandwidth, copy_row, print_table, time_ms  # noqa: E402
import roofline  # noqa: E402

from dpir_fast import ops  # noqa: E402
from dpir_fast.models.mirnet import DAU  # noqa: E402

# (B, C, H, W): MIRNet-S's levels for a 4×128×128 batch; on a GPU also the bandwidth target of issue 13
# (8×64×1024², where the floor is 4.3 GB of DRAM traffic, not launch latency)
SHAPES = [(4, 64, 128, 128), (4, 128, 64, 64), (4, 256, 32, 32)]
GPU_SHAPES = [*SHAPES, (8, 64, 1024, 1024)]


def parse(doc: str, repeats: int = 10) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--no-history", action="store_true", help="do not append to benchmarks/results/history.csv")
    return p.parse_args()


def variants(device: torch.device) -> list[tuple[torch.dtype, torch.memory_format]]:
    if device.type == "cpu":
        return [(torch.float32, torch.contiguous_format)]
    return [(d, f) for d in (torch.float32, torch.bfloat16) for f in (torch.contiguous_format, torch.channels_last)]


def run(name: str, cases: list[tuple[str, Callable, Callable, int]], args: argparse.Namespace,
        bandwidth: float | None = None) -> list[dict]:
    """Time each (case, reference, fused, bytes the fused op must move[, roofline.Op]) and print/append the table;
    with the Op, "of floor" = the roofline floor / the fused time (on a GPU roofline.py lists)."""
    device = torch.device(args.device)
    rows = []
    for case, reference, fused, nbytes, *model in cases:
        with torch.no_grad():
            ref_ms, ref_spread = time_ms(reference, device, repeats=args.repeats)
            fast_ms, fast_spread = time_ms(fused, device, repeats=args.repeats)
        row = {"benchmark": name, "case": case, "reference_ms": f"{ref_ms:.2f}", "fused_ms": f"{fast_ms:.2f}",
               "speedup": f"{ref_ms / fast_ms:.2f}"}
        if bandwidth:
            gbs = nbytes / fast_ms / 1e6
            row.update({"GB/s": f"{gbs:.0f}", "of copy": f"{100 * gbs / bandwidth:.0f}%"})
        floor = roofline.of_floor(model[0] if model else None, device, fast_ms)
        if floor is not None:
            row["of floor"] = f"{100 * floor:.0f}%"
        rows.append(row)
        history = [{"benchmark": name, "case": case, "backend": "reference", "median_ms": ref_ms,
                    "spread_ms": ref_spread},
                   {"benchmark": name, "case": case, "backend": "ext", "median_ms": fast_ms, "spread_ms": fast_spread,
                    "metric": "speedup", "value": ref_ms / fast_ms}]
        if bandwidth:
            history.append({"benchmark": name, "case": case, "backend": "ext", "median_ms": fast_ms,
                            "metric": "GB/s", "value": nbytes / fast_ms / 1e6})
        if floor is not None:
            history.append({"benchmark": name, "case": case, "backend": "ext", "median_ms": fast_ms,
                            "metric": "of roofline floor", "value": floor})
        if not args.no_history:
            append_history(history, device)
    if bandwidth and not args.no_history:
        append_history([copy_row(name, bandwidth)], device)
    print(f"{name} on {device}" + (f" (copy bandwidth {bandwidth:.0f} GB/s)" if bandwidth else ""))
    print_table(rows, list(rows[0]))
    return rows


def dau_cases(device: torch.device) -> list[tuple[str, Callable, Callable, int]]:
    cases = []
    for (B, C, H, W) in SHAPES if device.type == "cpu" else GPU_SHAPES:
        torch.manual_seed(0)
        for dtype, fmt in variants(device):
            dau = DAU(C, torch.nn.PReLU()).to(device, dtype).eval()
            r, x = (torch.randn(B, C, H, W, device=device, dtype=dtype).contiguous(memory_format=fmt) for _ in "rx")
            weights = (dau.SA.spatial.conv.weight, dau.CA.conv_du[0].weight, dau.CA.conv_du[2].weight,
                       dau.conv1x1.weight)
            label = f"{B}x{C}x{H}x{W} {str(dtype)[6:]}" + (" channels_last" if fmt == torch.channels_last else "")
            dau.backend = "reference"
            cases.append((label, lambda dau=dau, r=r, x=x: dau.tail(r, x),
                          lambda r=r, x=x, w=weights: ops.dau_tail(r, x, *w, backend="ext"),
                          4 * r.numel() * r.element_size(),  # r twice (both passes), x, out
                          roofline.dau_tail(B, C, H, W, dtype)))
    return cases


if __name__ == "__main__":
    args = parse(__doc__)
    dev = torch.device(args.device)
    run("bench_dau", dau_cases(dev), args, copy_bandwidth(dev) if dev.type == "cuda" else None)
