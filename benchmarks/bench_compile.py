"""torch.compile per network at the default precision: its compile time, its steady call against eager, and
after how many images it pays for itself.

    python benchmarks/bench_compile.py [--device cpu|cuda] [--task deblur|sr4x] [--size WxH] [--no-history]

The task's IR net, MIRNet-S and FusionNet at the paper's configurations (random weights), as DPIR runs them by
default: autocast in ``_backend.default_precision``, the denoiser channels_last with the extension's ops. Eager:
median of 2 calls after one warm-up; compiled: the first call (compilation included), then the same median. An
image costs one IR-net call and NFE_s = the preset's sampler steps denoiser and fusion calls, so the break-even is
(first compiled call − steady compiled call) / ((eager − compiled) · calls per image) images of one size. For
what a user's first run costs, run it with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1: inductor's on-disk cache (a
previous run, or run.py's compile backend) shortens the first call several times.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from _common import append_history, time_ms
from _workload import TASKS, autocast, build_modules, default_dtype, make_input
from dpir_fast.pipeline import PRESETS, run_network
from dpir_fast.reference.sampler import sample_timesteps


def networks(task: str, width: int, height: int, device: torch.device) -> dict:
    """name → (module, input, calls per image) as the pipeline calls them."""
    ir, den, fusion = (m.to(device) for m in build_modules(task))
    den.to(memory_format=torch.channels_last)
    y = make_input(task, 1, width, height, device)
    x = torch.rand(1, 3, height, width, device=device)
    den_in = torch.rand(1, 4, height, width, device=device).contiguous(memory_format=torch.channels_last)
    steps = len(sample_timesteps(PRESETS[task]["tau"], PRESETS[task]["tail"], PRESETS[task]["tail_steps"]))
    return {"ir net": (ir, lambda m: run_network(m, y, TASKS[task][1]), 1),
            "denoiser": (den, lambda m: m(den_in), steps),
            "fusion": (fusion, lambda m: m(x, x, 3), steps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--task", choices=["deblur", "sr4x"], default="deblur")
    p.add_argument("--size", default="256x256", help="output size WxH (default 256x256)")
    p.add_argument("--no-history", action="store_true", help="do not append to benchmarks/results/history.csv")
    args = p.parse_args()
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.lower().split("x"))
    dtype = default_dtype(device)
    rows = []
    print(f"torch.compile per network, {args.task} {width}x{height}, {str(dtype)[6:]} on {device}")
    print(f"{'network':10} {'eager ms':>10} {'compiled ms':>12} {'first call s':>13} {'calls/image':>12}  "
          "pays off after")
    with torch.no_grad(), autocast(device, dtype):
        for name, (module, call, per_image) in networks(args.task, width, height, device).items():
            eager, _ = time_ms(lambda: call(module), device, warmup=1, repeats=2)
            compiled_module = torch.compile(module)
            start = time.perf_counter()
            call(compiled_module)
            first_s = time.perf_counter() - start
            compiled, _ = time_ms(lambda: call(compiled_module), device, warmup=0, repeats=2)
            saved = (eager - compiled) * per_image
            images = math.ceil((first_s * 1e3 - compiled) / saved) if saved > 0 else None
            print(f"{name:10} {eager:10.1f} {compiled:12.1f} {first_s:13.1f} {per_image:12d}  "
                  + (f"{images} images" if images else "never"))
            case = f"{name} {args.task} {width}x{height} {str(dtype)[6:]}"
            rows += [{"benchmark": "bench_compile", "case": case, "backend": "eager", "median_ms": eager},
                     {"benchmark": "bench_compile", "case": case, "backend": "compile", "median_ms": compiled,
                      "metric": "images to pay off", "value": images}]
    if not args.no_history:
        append_history(rows, device)


if __name__ == "__main__":
    main()
