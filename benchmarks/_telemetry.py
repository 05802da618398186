"""What run.py measures besides time: the device's peak matmul rate, peak memory per backend, and NVML
telemetry (power, SM clock, utilisation, energy) sampled on a background thread."""
from __future__ import annotations

import resource
import statistics
import sys
import threading
import time

import torch

from _common import time_ms

NO_NVML = {"power_w": None, "sm_clock_mhz": None, "utilization_pct": None, "energy_per_image_j": None}


def peak_tflops(device: torch.device, dtype: torch.dtype) -> dict:
    """The rate of one large matmul [n, n] @ [n, n] in ``dtype`` (n = 8192 on CUDA, 2048 on CPU: < 2 s there)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in "ab")
    ms, _ = time_ms(lambda: a @ b, device, warmup=2, repeats=10 if device.type == "cuda" else 3)
    return {"tflops": 2 * n**3 / ms / 1e9, "matmul": f"{n}x{n}x{n}", "dtype": str(dtype).removeprefix("torch.")}


def _max_rss_mib() -> float:
    """The process's resident-set high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` then ``mem.mib``: on CUDA torch.cuda.max_memory_allocated (reset at
    entry: weights + activations + buffers); on CPU the growth of the process's peak RSS (a high-water mark over
    the whole process, so a later backend only shows what it needs beyond the earlier peaks)."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None
        self.kind = ("cuda max_memory_allocated (reset per backend)" if device.type == "cuda" else
                     "cpu peak RSS growth per backend (resource.getrusage ru_maxrss, process high-water mark)")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = _max_rss_mib()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib = _max_rss_mib() - self._start


def _nvml_handle(device: torch.device):
    """(pynvml module, the NVML handle of ``device``) or (None, why not)."""
    if device.type != "cuda":
        return None, "no NVIDIA GPU in use"
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed (pip install nvidia-ml-py, or the dpir_fast[bench] extra)"
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        try:   # by UUID: NVML numbers devices ignoring CUDA_VISIBLE_DEVICES
            return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except (pynvml.NVMLError, TypeError):   # older bindings take bytes, or no such UUID
            return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as err:
        return None, f"NVML failed: {err}"


class NvmlSampler:
    """``with NvmlSampler(device) as s: <timed work>`` then ``s.summary(images)``: mean power (W), SM clock (MHz)
    and utilisation (%) sampled every ``interval`` s, and energy per image (J) from the total-energy counter
    (Volta and later) or else the integral of the sampled power. All None, with ``s.note``, without NVML."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.nvml, self.handle = _nvml_handle(device)
        self.note = None if self.nvml else self.handle
        self.samples: list[tuple[float, float, float, float]] = []   # (time s, power W, SM MHz, util %)

    def _sample(self) -> None:
        nvml, h = self.nvml, self.handle
        self.samples.append((time.perf_counter(), nvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                             nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
                             nvml.nvmlDeviceGetUtilizationRates(h).gpu))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _energy_mj(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def __enter__(self) -> "NvmlSampler":
        if self.nvml:
            torch.cuda.synchronize(self.device)
            self._energy0, self._stop = self._energy_mj(), threading.Event()
            self._sample()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.nvml:
            torch.cuda.synchronize(self.device)
            self._stop.set()
            self._thread.join()
            self._sample()
            energy1 = self._energy_mj()
            if energy1 is not None and self._energy0 is not None:
                self.energy_j, self.energy_source = (energy1 - self._energy0) / 1e3, "total-energy counter delta"
            else:
                t, p = [s[0] for s in self.samples], [s[1] for s in self.samples]
                self.energy_j = sum((t[i + 1] - t[i]) * (p[i] + p[i + 1]) / 2 for i in range(len(t) - 1))
                self.energy_source = "integral of sampled power"

    def summary(self, images: int) -> dict:
        """Telemetry of the sampled span, energy divided over ``images``."""
        if not self.nvml:
            return {**NO_NVML, "note": self.note}
        _, power, clock, util = zip(*self.samples)
        return {"power_w": statistics.fmean(power), "sm_clock_mhz": statistics.fmean(clock),
                "utilization_pct": statistics.fmean(util), "energy_per_image_j": self.energy_j / images,
                "samples": len(self.samples), "energy_source": self.energy_source}
