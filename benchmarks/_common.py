"""Shared plumbing of the benchmarks: timing, the machine record, the results table and history.csv."""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY = RESULTS / "history.csv"
HISTORY_FIELDS = ["timestamp", "benchmark", "case", "backend", "median_ms", "spread_ms", "metric", "value",
                  "machine", "cpu", "device", "torch", "triton", "cuda", "version", "commit"]


def time_ms(fn: Callable[[], object], device: torch.device | str, warmup: int = 3,
            repeats: int = 10) -> tuple[float, float]:
    """(median, interquartile spread) in ms of ``fn()``: CUDA events on GPU, perf_counter on CPU."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def copy_bandwidth(device: torch.device | str) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write of a 256 MiB buffer), measured in the calling run: the
    ceiling a memory-bound op's achieved GB/s is set against."""
    src = torch.empty(64 * 2**20, device=device)
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), device, repeats=20)
    return 2 * src.numel() * 4 / ms / 1e6


def copy_row(benchmark: str, gbs: float) -> dict:
    """The history.csv row of the copy bandwidth ``benchmark``'s GB/s were set against."""
    return {"benchmark": benchmark, "case": "device-to-device copy 256 MiB", "backend": "torch", "metric": "GB/s",
            "value": gbs}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def cpu_flags() -> str:
    """What PyTorch's CPU kernels can use here: the vector ISA it dispatches to, native bf16 and AMX."""
    yes = {True: "yes", False: "no"}
    return (f"{torch.backends.cpu.get_cpu_capability()}, AVX-512 BF16 {yes[torch.cpu._is_avx512_bf16_supported()]}, "
            f"AMX {yes[torch.cpu._is_amx_tile_supported()]}")


def machine_record(device: torch.device | str) -> dict:
    """Where a number was measured: host, CPU (cores), device (with the NVIDIA driver on GPU), library versions,
    commit."""
    import dpir_fast
    device = torch.device(device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    driver = _nvidia_driver() if device.type == "cuda" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {"machine": platform.node(), "cpu": f"{_cpu_name()} ×{os.cpu_count()}", "cpu_flags": cpu_flags(),
            "device": name + (f" (driver {driver})" if driver else ""), "driver": driver,
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda or "none",
            "version": dpir_fast.__version__, "commit": _commit()}


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain aligned table of ``rows`` on stdout."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def append_history(rows: list[dict], device: torch.device | str, path: Path = HISTORY) -> None:
    """Append ``rows`` (benchmark, case, backend, median_ms, spread_ms, metric, value) to history.csv."""
    record = {**machine_record(device), "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**record, **row})
