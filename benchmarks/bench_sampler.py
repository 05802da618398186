"""Microbenchmark of the sampler ops ``jump``, ``ancestral_step``, ``ddim_step``: Triton vs the reference, eager.

    python benchmarks/bench_sampler.py [--device cpu|cuda] [--repeats N] [--no-history]

CUDA: batch 8×3×1024×1024, x0̂ float32 (NCHW) or bfloat16 (channels_last) and the denoiser input in the same
dtype and layout. GB/s counts what the fused op must move (x0̂ and x_t read, x_next float32 and [x̃, σ̃]
written) against the device's measured copy bandwidth; the target is ≥ 70 %. "of floor": roofline.py's floor / the
measured time (on a GPU it lists).
Without a GPU: a correctness smoke of the kernels through TRITON_INTERPRET=1 on small CPU tensors (the
interpreter's timings mean nothing: timings need a GPU). Exits 0 either way.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before Triton is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import append_history, copy_bandwidth, copy_row, print_table, time_ms  # noqa: E402
from bench_dau import parse  # noqa: E402
import roofline  # noqa: E402

from dpir_fast import ops  # noqa: E402
from dpir_fast.schedule import Schedule  # noqa: E402

SCHEDULE = Schedule.linear()
SHAPE = (8, 3, 1024, 1024)   # the CUDA cases' [B, C, H, W] (roofline.py models this shape)
OPS = {
    "jump": lambda x0, xt, **k: ops.jump(x0, SCHEDULE, 250, [0] * x0.shape[0], **k),
    "ancestral_step": lambda x0, xt, **k: ops.ancestral_step(x0, xt, 40, SCHEDULE, [0] * x0.shape[0], **k),
    "ddim_step": lambda x0, xt, **k: ops.ddim_step(x0, xt, 250, 245, SCHEDULE, [0] * x0.shape[0], eta=1.0, **k),
}


def inputs(shape, dtype, device):
    x0 = torch.rand(shape, device=device, dtype=dtype)
    if dtype != torch.float32:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    return x0, torch.randn(shape, device=device)


def compare(name: str, cases, args, unit: str, baseline: float | None = None, target: str = "") -> None:
    """Time (case, reference, triton, work[, roofline.Op]) on CUDA; ``unit`` is "GB/s" (work = bytes) or "TFLOP/s"
    (FLOPs); with the Op, "of floor" = the roofline floor / the Triton time (on a GPU roofline.py lists)."""
    device, rows, history = torch.device(args.device), [], []
    scale = 1e6 if unit == "GB/s" else 1e9
    for case, reference, fast, work, *model in cases:
        with torch.no_grad():
            ref_ms, ref_spread = time_ms(reference, device, repeats=args.repeats)
            fast_ms, fast_spread = time_ms(fast, device, repeats=args.repeats)
        rate = work / fast_ms / scale
        row = {"case": case, "reference_ms": f"{ref_ms:.3f}", "triton_ms": f"{fast_ms:.3f}",
               "speedup": f"{ref_ms / fast_ms:.2f}", unit: f"{rate:.1f}", "reference " + unit:
               f"{work / ref_ms / scale:.1f}"}
        if baseline:
            row["of copy"] = f"{100 * rate / baseline:.0f}%"
        rows.append(row)
        history += [{"benchmark": name, "case": case, "backend": "reference", "median_ms": ref_ms,
                     "spread_ms": ref_spread, "metric": unit, "value": work / ref_ms / scale},
                    {"benchmark": name, "case": case, "backend": "triton", "median_ms": fast_ms,
                     "spread_ms": fast_spread, "metric": unit, "value": rate}]
        if (floor := roofline.of_floor(model[0] if model else None, device, fast_ms)) is not None:
            row["of floor"] = f"{100 * floor:.0f}%"
            history.append({"benchmark": name, "case": case, "backend": "triton", "median_ms": fast_ms,
                            "metric": "of roofline floor", "value": floor})
    print(f"{name} on {torch.cuda.get_device_name(device)}"
          + (f" (copy bandwidth {baseline:.0f} GB/s)" if baseline else "") + (f"; target {target}" if target else ""))
    print_table(rows, list(rows[0]))
    if baseline:
        history.append(copy_row(name, baseline))
    if not args.no_history:
        append_history(history, device)


def cuda_cases(device, shape=SHAPE):
    batch, channels, height, width = shape
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        x0, xt = inputs(shape, dtype, device)
        den = dict(den_dtype=dtype, den_channels_last=dtype != torch.float32)
        size = x0.element_size()
        for name, op in OPS.items():
            reads = x0.numel() * (size + (4 if name != "jump" else 0))
            writes = x0.numel() * 4 + batch * (channels + 1) * height * width * size
            cases.append((f"{name} {'x'.join(map(str, shape))} {str(dtype)[6:]}",
                          lambda op=op, x0=x0, xt=xt, den=den: op(x0, xt, backend="reference", **den),
                          lambda op=op, x0=x0, xt=xt, den=den: op(x0, xt, backend="triton", **den), reads + writes,
                          roofline.sampler_update(name, *shape, dtype, x_t=name != "jump")))
    return cases


def cpu_smoke(args) -> None:
    """Each op through the interpreter against its reference: max |fast − reference| per output."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x0, xt = inputs((2, 3, 37, 53), dtype, "cpu")
        den = dict(den_dtype=dtype, den_channels_last=dtype != torch.float32)
        for name, op in OPS.items():
            (out, d), (ref, ref_d) = op(x0, xt, backend="triton", **den), op(x0, xt, backend="reference", **den)
            err, den_err = (out - ref).abs().max().item(), (d.float() - ref_d.float()).abs().max().item()
            rows.append({"benchmark": "bench_sampler", "case": f"{name} 2x3x37x53 {str(dtype)[6:]}",
                         "backend": "triton-interpret", "metric": "max_abs_err x_next / den",
                         "value": f"{err:.2e} / {den_err:.2e}"})
    smoke_report("bench_sampler", rows, args)


def smoke_report(name: str, rows: list[dict], args) -> None:
    """Print (and append to history.csv) the rows of a CPU correctness smoke."""
    print(f"{name}: no GPU, correctness smoke through TRITON_INTERPRET=1 (timings need a GPU)")
    print_table(rows, ["case", "backend", "metric", "value"])
    if not args.no_history:
        append_history(rows, "cpu")


if __name__ == "__main__":
    args = parse(__doc__)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        compare("bench_sampler", cuda_cases(dev), args, "GB/s", copy_bandwidth(dev), "≥ 70 % of copy bandwidth")
    else:
        cpu_smoke(args)
