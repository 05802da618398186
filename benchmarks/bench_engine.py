"""The sampling engine's τ-step loop (MIRNet-S + FusionNet, deblur plan τ = 5): CUDA graph vs eager.

    python benchmarks/bench_engine.py [--device cpu|cuda] [--repeats N] [--no-history]

CUDA, bfloat16, channels_last, backend "fast": 1×3×256×256, 8×3×256×256 and 1×3×720×1280; ms per image with
the loop replayed as one graph against the same step function launched eagerly, and max |graph − eager|.
Without a GPU: the engine's eager loop (C++ CPU attention ops, static buffers) against the reference sampler
with the reference MIRNet at 1×3×64×64 float32.
"""
from __future__ import annotations

import torch

from _common import append_history, print_table, time_ms
from bench_dau import parse
from dpir_fast.engine import Engine, Plan
from dpir_fast.models import FusionNet, mirnet_s
from dpir_fast.pipeline import run_network
from dpir_fast.reference import dpir_sample_ref
from dpir_fast.schedule import Schedule

SCHEDULE = Schedule.linear()
TAU = 5


def networks(device):
    torch.manual_seed(0)
    return mirnet_s().to(device).eval(), FusionNet().to(device).eval()


def cuda_rows(args) -> tuple[list[dict], list[dict]]:
    device = torch.device("cuda")
    denoiser, fusion = networks(device)
    denoiser.to(memory_format=torch.channels_last)

    def denoise(inp):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return run_network(denoiser, inp)

    plan = Plan.make(SCHEDULE, TAU)
    engines = {mode: Engine(plan, denoise, fusion, torch.bfloat16, channels_last=True, backend="fast", graphs=mode)
               for mode in ("off", "on")}
    rows, history = [], []
    for batch, height, width in ((1, 256, 256), (8, 256, 256), (1, 720, 1280)):
        x_ir = torch.rand(batch, 3, height, width, device=device)
        seeds = list(range(batch))
        with torch.no_grad():
            engines["on"].run(x_ir, seeds)   # a bucket's first use runs eagerly; the second captures and replays
            diff = (engines["on"].run(x_ir, seeds) - engines["off"].run(x_ir, seeds)).abs().max().item()
            times = {mode: time_ms(lambda e=e: e.run(x_ir, seeds), device, repeats=args.repeats)
                     for mode, e in engines.items()}
        case = f"{batch}x3x{height}x{width} bf16 tau={TAU}"
        eager, graph = times["off"][0] / batch, times["on"][0] / batch
        rows.append({"case": case, "eager ms/img": f"{eager:.2f}", "graph ms/img": f"{graph:.2f}",
                     "speedup": f"{eager / graph:.2f}", "max|graph-eager|": f"{diff:.1e}"})
        for mode, name in (("off", "eager"), ("on", "graph")):
            history.append({"benchmark": "bench_engine", "case": case, "backend": f"fast-{name}",
                            "median_ms": times[mode][0], "spread_ms": times[mode][1], "metric": "ms_per_image",
                            "value": times[mode][0] / batch})
    return rows, history


def cpu_rows(args) -> tuple[list[dict], list[dict]]:
    device = torch.device("cpu")
    denoiser, fusion = networks(device)
    x_ir = torch.rand(1, 3, 64, 64)

    def engine_loop():
        denoiser.backend = "auto"
        return engine.run(x_ir, [0])

    def reference_loop():
        denoiser.backend = "reference"
        return dpir_sample_ref(x_ir, lambda inp: run_network(denoiser, inp), fusion, SCHEDULE, TAU, [0])

    engine = Engine(Plan.make(SCHEDULE, TAU), lambda inp: run_network(denoiser, inp), fusion)
    with torch.no_grad():
        diff = (engine_loop() - reference_loop()).abs().max().item()
        ref_ms, ref_spread = time_ms(reference_loop, device, warmup=1, repeats=args.repeats)
        eng_ms, eng_spread = time_ms(engine_loop, device, warmup=1, repeats=args.repeats)
    case = f"1x3x64x64 fp32 tau={TAU}"
    rows = [{"case": case, "reference ms/img": f"{ref_ms:.1f}", "engine eager ms/img": f"{eng_ms:.1f}",
             "speedup": f"{ref_ms / eng_ms:.2f}", "max|engine-ref|": f"{diff:.1e}"}]
    history = [{"benchmark": "bench_engine", "case": case, "backend": "reference", "median_ms": ref_ms,
                "spread_ms": ref_spread, "metric": "ms_per_image", "value": ref_ms},
               {"benchmark": "bench_engine", "case": case, "backend": "fast-eager", "median_ms": eng_ms,
                "spread_ms": eng_spread, "metric": "ms_per_image", "value": eng_ms}]
    return rows, history


if __name__ == "__main__":
    args = parse(__doc__, repeats=5)
    dev = torch.device(args.device)
    rows, history = cuda_rows(args) if dev.type == "cuda" else cpu_rows(args)
    print(f"bench_engine on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}")
    print_table(rows, list(rows[0]))
    if not args.no_history:
        append_history(history, dev)
