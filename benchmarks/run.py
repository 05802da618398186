"""End-to-end benchmark of DP-IR: ms/image, images/s, the TFLOP split, achieved TFLOP/s, memory, NVML telemetry.

    python benchmarks/run.py [--task deblur|sr4x|burst[,...]] [--size WxH] [--batch B]
        [--backends reference,compile,fast] [--dtype bf16|fp16|fp32] [--device auto|cpu|cuda[:N]]
        [--repeats N] [--warmup N] [--threads N] [--sizes WxH,... [--plot PNG]] [--json PATH] [--no-history]
        [--no-forward] [--quick]
    dpir-fast bench ...        (the same, from a source checkout)

The networks at the paper's configurations with random weights: MIRNet-S, FusionNet and the task's IR net
(deblur: FFTformer GoPro; sr4x: SwinIR classical ×4 on [B, 3, H/4, W/4]; burst: BSRT-Small on [B, 14, 4, H/8,
W/8]), sampled at the paper's τ and tail (``DPIR.preset``); ``--size`` is the output size. Backends:
``reference`` = DPIR(backend="reference"); ``compile`` = the same with torch.compile on the IR net, denoiser and
fusion; ``fast`` = DPIR(backend="fast"), measured as backend="auto" where "fast" cannot run (CPU: no Triton;
"auto" is then the C++ extension's DAU/SKFF with the reference sampler and fusion ops; the row says so).

Cost. FlopCounterMode counts, per image, y = one IR-net call and x = one denoiser + one fusion call. With NFE =
``pipe.nfe`` (the IR net once plus the sampler's calls) and NFE_s = NFE − 1 denoiser+fusion evaluations, TFLOP
per image = x·NFE_s + y: the paper's "x·NFE + y at 720p", whose NFE there counts the calls that cost x and whose
y is the IR net. The split is also counted at 1280×720, the paper's size, whatever --size is (fake tensors: no
compute). Achieved TFLOP/s is set against a large matmul timed in the same run.

Rows per backend: ``jump`` (DP-IR, measured), ``forward`` (the SDEdit/CCDF start at τ, measured) and ``chain``
(T = 1000 denoiser+fusion steps from x_T: FLOPs x·1000 + y exactly; time extrapolated as IR-net ms + 1000 × ms
per step, the step being (jump ms − IR-net ms) / NFE_s of the measured run); "× chain" is the chain's time over
the row's. Components (IR net, denoiser, fusion, one sampler step, DAU tail and SKFF at MIRNet-S's
full-resolution level) are timed alone, with each backend's speed-up over the reference. Medians and
interquartile spreads over --repeats after --warmup calls (the first call, timed apart as first_call_s,
compiles, captures and probes memory); CUDA events on GPU. Peak memory over the first call, warm-ups and jump
repeats: CUDA max_memory_allocated, CPU the growth of the process's peak RSS (a high-water mark: a later backend
shows only what it needs beyond the earlier ones). NVML (nvidia-ml-py, optional): power, SM clock, utilisation and
energy per image over the jump row's timed repeats.

Without a GPU, --device auto runs the CPU suite: deblur at 256×256 and sr4x (NFE 51) from 64×64 to 256×256,
the fp32 NCHW reference (the baseline) against "fast" at the pipeline's default precision (bf16 channels_last on
CPUs with native bf16, fp32 channels_last elsewhere; --dtype sets one precision for all backends). --quick: tiny
sizes, one repeat, the same networks (so the FLOP counts stay those of the real modules).
Output: tables on stdout, progress on stderr, rows appended to benchmarks/results/history.csv (unless
--no-history), a JSON file (default benchmarks/results/run_<task>_<device>.json) and with --plot a PNG of
ms/image against --sizes. Ctrl-C or SIGTERM (a time limit) ends the run at once, the backend in progress marked
"interrupted", and what was measured until then is still reported and written.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):   # the checkout's dpir_fast, and the benchmark helpers
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

from _common import RESULTS, append_history, machine_record, time_ms  # noqa: E402
from _report import history_rows, plot, print_report  # noqa: E402
from _telemetry import NvmlSampler, PeakMemory, peak_tflops  # noqa: E402
from _workload import (COMPONENTS, EXT_COMPONENTS, FLOP_NOTES, TASKS, T, autocast, build_modules,  # noqa: E402
                       components, cost_split, make_backend, make_input)
from dpir_fast import _backend  # noqa: E402
from dpir_fast.cli import Progress  # noqa: E402
from dpir_fast.cli_common import device_arg  # noqa: E402
from dpir_fast.pipeline import DTYPES, PRESETS  # noqa: E402

BACKENDS = ("reference", "compile", "fast")
CPU_SUITE = {"deblur": (256, 256), "sr4x": (256, 256)}   # output sizes: sr4x from 64×64
QUICK = {"deblur": (32, 32), "sr4x": (32, 32), "burst": (64, 64)}
PAPER_SIZE = (1280, 720)   # the paper reports cost at 720p; the GPU default
GPU_SWEEP, CPU_SWEEP = "256x256,512x512,1280x720,1920x1080", "32x32,64x64,128x128"


# 1. Arguments ----------------------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or 0 in (int(match[1]), int(match[2])):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT with positive sides (e.g. 1280x720)")
    return int(match[1]), int(match[2])


def _listed(name: str, choices):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"invalid {name} {','.join(bad) or repr(text)} "
                                             f"(choose from {', '.join(choices)}, comma-separated)")
        return items
    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return int(text)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                epilog="See the module docstring of benchmarks/run.py for the definitions.")
    p.add_argument("--task", type=_listed("task", list(TASKS)),
                   help="deblur, sr4x, burst or a comma list (default: deblur on GPU; deblur,sr4x on CPU)")
    p.add_argument("--size", type=_size, metavar="WxH", help="output size (default 1280x720 on GPU; CPU suite sizes)")
    p.add_argument("--batch", type=_positive, default=1, help="images per call (default 1)")
    p.add_argument("--backends", type=_listed("backend", BACKENDS),
                   help="comma list of reference, compile, fast (default: all on GPU; reference,fast on CPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="every backend's networks' precision (default: bf16 on GPU; on CPU the reference runs "
                        "fp32 NCHW, the baseline, and the others the pipeline's default, bf16 where the CPU has "
                        "native bf16)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (default: cuda if visible, else the CPU suite), cpu, cuda[:N]")
    p.add_argument("--repeats", type=_positive, help="timed calls per measurement (default 10 GPU, 3 CPU)")
    p.add_argument("--warmup", type=_positive,
                   help="untimed calls before each measurement, the first call included (default 3 GPU, 1 CPU)")
    p.add_argument("--threads", type=_positive, help="CPU threads (torch.set_num_threads; default torch's own)")
    p.add_argument("--sizes", type=lambda s: [_size(x) for x in s.split(",")], metavar="WxH,...",
                   help="also time the jump row at these output sizes (the --plot x axis)")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write ms/image against --sizes (needs matplotlib)")
    p.add_argument("--json", type=Path, metavar="PATH", help="results file (default results/run_<task>_<device>.json)")
    p.add_argument("--no-history", action="store_true", help="do not append to benchmarks/results/history.csv")
    p.add_argument("--no-forward", action="store_true",
                   help="skip the forward row (it costs what the jump row does: a third of a long CPU run)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repeat, the real networks")
    return p


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill the device-dependent defaults into ``args``; inconsistent settings are usage errors (exit 2)."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"argument --device: {args.device} asked for, but no CUDA device is visible")
    args.device = torch.device(args.device)
    gpu = args.device.type == "cuda"
    tasks = args.task or (["deblur"] if gpu or args.quick else list(CPU_SUITE))
    default = {t: QUICK[t] if args.quick else PAPER_SIZE if gpu else CPU_SUITE.get(t, QUICK[t]) for t in tasks}
    args.sizes_by_task = {t: args.size or default[t] for t in tasks}
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib (or the dpir_fast[bench] extra)")
        args.sizes = args.sizes or [_size(s) for s in (GPU_SWEEP if gpu else CPU_SWEEP).split(",")]
    args.sizes = args.sizes or []
    for task in tasks:
        scale = TASKS[task][1]
        for width, height in [args.sizes_by_task[task], *args.sizes]:
            if width % scale or height % scale:
                parser.error(f"argument --size/--sizes: {width}x{height}: {task} needs multiples of {scale} "
                             f"(its input is the output size / {scale})")
    args.backends = args.backends or (list(BACKENDS) if gpu else ["reference", "fast"])
    args.precisions = {name: precision(name, args.dtype, args.device) for name in args.backends}
    args.dtype = describe(args.precisions)
    args.repeats = args.repeats or (1 if args.quick else 10 if gpu else 3)
    args.warmup = args.warmup or (3 if gpu and not args.quick else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.json = args.json or RESULTS / f"run_{'+'.join(tasks)}_{args.device.type}.json"
    return args


def precision(backend: str, dtype: str | None, device: torch.device) -> tuple[str, bool]:
    """(dtype name, channels_last) of a backend: ``dtype`` where given; on a CPU the reference is the fp32 NCHW
    baseline and the others run the pipeline's default; on a GPU every backend runs bf16 channels_last."""
    if dtype:
        return dtype, True
    if device.type == "cpu" and backend == "reference":
        return "fp32", False
    return _backend.default_precision(device)[0], True


def describe(precisions: dict[str, tuple[str, bool]]) -> str:
    """"bf16" when every backend runs the same dtype channels_last, else e.g. "reference fp32 NCHW, fast bf16"."""
    if len(set(precisions.values())) == 1 and next(iter(precisions.values()))[1]:
        return next(iter(precisions.values()))[0]
    return ", ".join(f"{name} {dtype}{'' if cl else ' NCHW'}" for name, (dtype, cl) in precisions.items())


# 2. Measurements -------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_call(b, run, device: torch.device) -> float:
    """Seconds of the first call (compilation, graph capture, memory probe). A "fast" pipeline whose Triton ops
    cannot run on this device is measured as backend="auto" instead, with the reason in ``b.note``."""
    start = time.perf_counter()
    try:
        run()
    except RuntimeError:
        reason = _backend.unavailable_reason("triton", device)
        if b.name != "fast" or reason is None:
            raise
        b.pipe.configure(backend="auto")
        b.ops = "auto"
        b.note = (f'backend="fast" cannot run here ({reason}); measured as backend="auto": the C++ extension\'s '
                  "DAU/SKFF where it is built, the reference sampler and fusion ops otherwise")
        start = time.perf_counter()
        run()
    _sync(device)
    return time.perf_counter() - start


def rates(ms_image: float, spread: float, nfe: int, tflop: float, peak: float) -> dict:
    """The numbers of one table row from the per-image time (ms) and cost (TFLOP)."""
    return {"ms_per_image": ms_image, "spread_ms": spread, "images_per_s": 1e3 / ms_image, "nfe": nfe,
            "ms_per_nfe": ms_image / nfe, "tflop_per_image": tflop, "tflops": tflop / ms_image * 1e3,
            "pct_of_peak": 100 * tflop / ms_image * 1e3 / peak}


def measure_backend(task: str, b, y, modules, args, cost: dict, peak: float, progress: Progress) -> dict:
    """Every number of one backend: the jump, forward and chain rows, memory, NVML, components, the sweep."""
    dev, pipe, batch, tag = args.device, b.pipe, y.shape[0], f"{task} {b.name}:"

    def measured(item: str, fn):
        progress.start(f"{tag} {item}")
        value = fn()
        ms = value[0] if isinstance(value, tuple) else value * 1e3
        progress.step(f"{tag} {item}", f"{ms:.1f} ms")
        return value

    def run():
        return pipe(y, seed=0)

    with torch.no_grad():
        with PeakMemory(dev) as mem:   # the pipeline's own calls only
            first_s = measured("first call", lambda: first_call(b, run, dev))
            for _ in range(args.warmup - 1):
                run()
            with NvmlSampler(dev) as nvml:
                jump = measured("jump", lambda: time_ms(run, dev, warmup=0, repeats=args.repeats))
        forward = None
        if not args.no_forward:
            pipe.configure(start="forward")
            forward = measured("forward", lambda: time_ms(run, dev, args.warmup, args.repeats))
            pipe.configure(start="jump")
        comps, dtype = {}, DTYPES[args.precisions[b.name][0]]
        with autocast(dev, dtype):
            for name, fn in components(b, modules, y, dtype).items():
                comps[name] = fn and measured(name, lambda: time_ms(fn, dev, args.warmup, args.repeats))
        sweep = []
        for width, height in args.sizes:
            y_s = make_input(task, batch, width, height, dev)
            ms, _ = measured(f"jump {width}x{height}",
                             lambda: time_ms(lambda: pipe(y_s, seed=0), dev, args.warmup, args.repeats))
            sweep.append(ms / batch)
    nfe, nfe_s = pipe.nfe, pipe.nfe - pipe.settings["ir_ensemble"]
    assert nfe == cost["nfe"], (nfe, cost["nfe"])
    ir_ms = comps["ir net"][0] / batch
    step_ms = (jump[0] / batch - ir_ms) / nfe_s
    rows = {"jump": rates(jump[0] / batch, jump[1] / batch, nfe, cost["total"] / 1e12, peak),
            "forward": forward and rates(forward[0] / batch, forward[1] / batch, nfe, cost["total"] / 1e12, peak),
            "chain": rates(ir_ms + T * step_ms, None, T + 1, cost["chain_total"] / 1e12, peak)}
    rows = {name: row for name, row in rows.items() if row}
    for name, row in rows.items():
        row["measured"] = name != "chain"
        row["speedup_vs_chain"] = rows["chain"]["ms_per_image"] / row["ms_per_image"]
    return {"ran_as": pipe.settings["backend"], "note": b.note, "dtype": pipe.dtype_name,
            "channels_last": pipe.settings["channels_last"], "first_call_s": first_s, **rows,
            "ms_per_sampler_step": step_ms, "peak_mem_mib": mem.mib, "nvml": nvml.summary(args.repeats * batch),
            "components": {k: v and {"median_ms": v[0], "spread_ms": v[1]} for k, v in comps.items()},
            "sweep_ms_per_image": sweep}


def measure_task(task: str, args, peak: float, progress: Progress) -> dict:
    """A task's cost split (at its size and at the paper's 1280×720) and every backend's numbers."""
    width, height = args.sizes_by_task[task]
    modules = build_modules(task)
    progress.start(f"{task} FLOPs")
    cost, cost_720p = (cost_split(task, modules, w, h) for w, h in ((width, height), PAPER_SIZE))
    progress.step(f"{task} FLOPs", f"x = {cost['x'] / 1e12:.4g}, y = {cost['y'] / 1e12:.4g} TFLOP")
    modules = tuple(m.to(args.device) for m in modules)
    inp = make_input(task, args.batch, width, height, args.device)
    results = {"size": [width, height], "input_shape": list(inp.shape), "tau": PRESETS[task]["tau"],
               "modules": {"ir": f"{TASKS[task][0].__name__}()", "denoiser": "mirnet_s()", "fusion": "FusionNet()",
                           "params": {k: sum(p.numel() for p in m.parameters())
                                      for k, m in zip(("ir", "denoiser", "fusion"), modules)}},
               "flops": cost, "flops_1280x720": cost_720p, "backends": {}}
    for name in args.backends:
        try:
            b = make_backend(name, task, modules, args.precisions[name], args.batch)
            results["backends"][name] = measure_backend(task, b, inp, modules, args, cost, peak, progress)
        except Exception as err:  # noqa: BLE001 -- one backend failing (a compile error, OOM) must not lose the run
            results["backends"][name] = {"error": f"{type(err).__name__}: {err}"}
            progress.message(f"{task} {name}: failed:\n{traceback.format_exc()}")
        except KeyboardInterrupt:   # Ctrl-C or SIGTERM (a time limit): report what was measured, run nothing more
            results["backends"][name] = {"error": "interrupted"}
            results["interrupted"] = True
            progress.message(f"{task} {name}: interrupted; the results so far are reported")
            break
    return results


# 3. Entry point --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark with ``argv`` (default sys.argv[1:]); returns the exit code (2: usage error)."""
    parser = build_parser(prog)
    try:
        args = resolve(parser.parse_args(argv), parser)
    except SystemExit as exit_:   # argparse printed the usage error (2) or the help (0)
        return int(exit_.code or 0)
    started = time.perf_counter()
    items = 1 + sum(3 - args.no_forward + len(COMPONENTS) - len(EXT_COMPONENTS) * (name == "compile") + len(args.sizes)
                    for name in args.backends)   # per task: FLOPs; first call, jump, forward, components, sweep
    progress = Progress(len(args.sizes_by_task) * items)
    memory_kind = PeakMemory(args.device).kind
    peak = peak_tflops(args.device, DTYPES[args.precisions[args.backends[-1]][0]])  # the fastest backend's
    tasks = {}
    for task in args.sizes_by_task:
        tasks[task] = measure_task(task, args, peak["tflops"], progress)
        if tasks[task].get("interrupted"):
            break
    progress.close()
    wall_s = time.perf_counter() - started
    record = machine_record(args.device)
    settings = {"command": " ".join([prog or "python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
                "device": str(args.device), "dtype": args.dtype, "batch": args.batch, "backends": args.backends,
                "repeats": args.repeats, "warmup": args.warmup, "threads": torch.get_num_threads(),
                "quick": args.quick, "T": T, "sizes": [list(s) for s in args.sizes]}
    notes = list(FLOP_NOTES)
    if _backend.interpreting():
        notes.append("TRITON_INTERPRET is set: Triton kernels ran in the interpreter, their timings mean nothing")
    result = {"machine": record, "settings": settings, "peak": peak, "memory_kind": memory_kind, "notes": notes,
              "wall_s": wall_s, "tasks": tasks}
    print_report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    if not args.no_history:
        append_history(history_rows(result), args.device)
    if args.plot:
        plot(result, args.plot)
    print(f"\nwall time {wall_s:.0f} s; JSON {args.json}" + (f"; plot {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # timeout(1) stops a run as Ctrl-C does
    raise SystemExit(main())
