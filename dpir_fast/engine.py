"""The sampling engine: static buffers per shape bucket, one step function over them, CUDA graphs.

A :class:`Plan` fixes the timesteps and their updates (float64 coefficients from the schedule). An
:class:`Engine` runs it for batches of IR estimates: each batch shape (a :class:`Bucket`) gets a
:class:`Runner` that owns the static buffers — x_IR, the noise keys, the float32 state x_t (which ends
as x0̂) and the denoiser input — and the step function runs over them: denoiser → FusionNet (fused with
the update where Triton runs) → next denoiser input, after the jump. On CUDA the whole loop is captured
into one ``torch.cuda.CUDAGraph`` per bucket on its second use (warm-up on a side stream, one memory pool
shared by the buckets, per-step coefficients baked in); each replay reads the noise keys (seed and placement) from
their device buffer, so it draws that batch's own noise. Elsewhere the same loop runs eagerly.

What a graph reads stays valid: capture runs on the bucket's device whatever device is current, with autocast's
weight-cast cache off whatever the caller's autocast does (cast weights are then made inside the graph, never
borrowed from a cache that is freed later); the runner holds the packed FusionNet weights and the time-branch
weights its graph was captured with, and before each replay compares the parameters' storages and version
counters with those at capture: after ``load_state_dict``, an optimiser step or a move, it captures again.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from . import _backend, ops
from .models.fusion import FusionNet
from .reference.noise import noise_keys
from .reference.sampler import SamplerUpdate, ancestral_update, ddim_update, jump_update, sample_timesteps
from .schedule import Schedule

GRAPH_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Plan:
    """The timesteps of a sampler run and its updates: ``start`` reaches τ, ``updates[i]`` leaves timesteps[i]."""

    timesteps: tuple[int, ...]
    start: SamplerUpdate
    updates: tuple[SamplerUpdate, ...]

    @classmethod
    def make(cls, schedule: Schedule, tau: int, tail: str = "ancestral", tail_steps: int | None = None,
             start: str = "jump", eta: float = 0.0) -> "Plan":
        if not 1 <= int(tau) <= schedule.T:
            raise ValueError(f"tau must lie in [1, {schedule.T}], got {tau}")
        steps = sample_timesteps(tau, tail, tail_steps)
        if tail == "ancestral":
            updates = [ancestral_update(schedule, t) for t in steps]
        else:
            updates = [ddim_update(schedule, t, s, eta) for t, s in zip(steps, [*steps[1:], 0])]
        return cls(tuple(steps), jump_update(schedule, tau, start), tuple(updates))


@dataclass(frozen=True)
class Bucket:
    """The static shape of one runner: a batch of [C, H, W] estimates on ``device``."""

    batch: int
    channels: int
    height: int
    width: int
    device: torch.device


class Runner:
    """The static buffers of one bucket and, once captured, the CUDA graph of the whole loop over them.

    x_ir [B, C, H, W] float32 (input), keys [B, 4] int64 (noise keys), x [B, C, H, W] float32 (the state;
    x0̂ after the last step), den [B, C + 1, H, W] (the denoiser input, in the engine's dtype and layout).
    ``held``: the tensors besides these that the graph reads (packed weights, time weights); ``versions``: the
    parameters' (storage, version) at capture.
    """

    def __init__(self, bucket: Bucket, den_dtype: torch.dtype, channels_last: bool, capturable: bool):
        shape = (bucket.batch, bucket.channels, bucket.height, bucket.width)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.bucket = bucket
        with torch.inference_mode(False):   # ordinary tensors: written in place whatever mode later calls run in
            self.x_ir = torch.zeros(shape, dtype=torch.float32, device=bucket.device)
            self.x = torch.zeros_like(self.x_ir)
            self.keys = torch.zeros(bucket.batch, 4, dtype=torch.int64, device=bucket.device)
            self.den = torch.empty(bucket.batch, bucket.channels + 1, bucket.height, bucket.width, dtype=den_dtype,
                                   device=bucket.device, memory_format=fmt).zero_()
        self.graph: DeviceGraph | None = None
        self.held: tuple = ()
        self.versions: tuple = ()
        self.eager = not capturable   # True: never (again) try to capture
        self.uses = 0


def versions(tensors) -> tuple:
    """(storage pointer, version counter) of each tensor: changes with any in-place write or new storage
    (an inference-mode tensor has no counter: -1)."""
    out = []
    for t in tensors:
        try:
            version = t._version
        except RuntimeError:
            version = -1
        out.append((t.data_ptr(), version))
    return tuple(out)


class DeviceGraph:
    """A CUDA graph that replays on the device it was captured on, whichever device is current."""

    def __init__(self, graph: torch.cuda.CUDAGraph, device: torch.device):
        self.graph, self.device = graph, device

    def replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()


def capture_graph(loop: Callable[[], None], device: torch.device, pool) -> DeviceGraph:
    """``loop`` warmed up on a side stream of ``device`` (compiles kernels, packs weights, lets cuDNN choose),
    then captured on a stream of ``device``, whichever device is current."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            loop()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=torch.cuda.Stream(device)):
            loop()
    return DeviceGraph(graph, device)


def graph_pool(device: torch.device):
    """A memory pool for the graphs of ``device``."""
    with torch.cuda.device(device):
        return torch.cuda.graph_pool_handle()


def uncached_autocast(device_type: str):
    """The caller's autocast state for ``device_type`` with the weight-cast cache off."""
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)


class Engine:
    """Runs a :class:`Plan` with ``denoise`` ([x̃, σ̃] [B, C + 1, H, W] → [B, C, H, W]) and ``fusion``.

    ``dtype``: the networks' dtype (None: float32), which is also the denoiser input's dtype;
    ``channels_last``: the denoiser input's memory format. A ``models.FusionNet`` runs fused with the
    update in its last convolution where Triton runs; any other fusion module runs as itself.
    ``graphs``: ``"auto"`` captures each CUDA bucket's loop into a graph when the bucket comes back (a failed
    capture warns once and that bucket runs eagerly), ``"on"`` makes a failed capture an error, ``"off"`` always runs eagerly.
    ``max_buckets``: runners (and graphs) kept, least recently used dropped first. ``params``: the tensors
    ``denoise`` reads (its module's parameters; taken from ``denoise`` itself when it is a module): a graph is
    captured again when they or the fusion network's parameters change.
    """

    def __init__(self, plan: Plan, denoise: Callable[[torch.Tensor], torch.Tensor], fusion: nn.Module,
                 dtype: torch.dtype | None = None, channels_last: bool = False, backend: str = "auto",
                 graphs: str = "auto", max_buckets: int = 8, params: Sequence[torch.Tensor] | None = None):
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
        self.plan, self.denoise, self.fusion, self.backend = plan, denoise, fusion, backend
        self.dtype, self.den_dtype, self.channels_last = dtype, dtype or torch.float32, channels_last
        self.graphs, self.max_buckets = graphs, max_buckets
        if params is None:
            params = list(denoise.parameters()) if isinstance(denoise, nn.Module) else []
        self.params = [*params, *fusion.parameters()]
        self._time_weights: tuple[tuple, torch.Tensor | None] = ((), None)
        self.runners: "OrderedDict[Bucket, Runner]" = OrderedDict()
        self._pools: dict[torch.device, tuple] = {}
        self._warned = False

    # 1. The step function over a runner's buffers ------------------------------------------------------
    def time_weights(self) -> torch.Tensor | None:
        """FusionNet's 3CA weights for every step [τ steps, n_feat], computed again when its parameters change."""
        if not isinstance(self.fusion, FusionNet):
            return None
        current = versions(self.fusion.parameters())
        if self._time_weights[0] != current:
            self._time_weights = (current, ops.fusion_time_weights(self.fusion, self.plan.timesteps))
        return self._time_weights[1]

    def start(self, r: Runner) -> None:
        """x_T → x_τ (the jump, or the forward start) and the denoiser input at τ."""
        ops.sampler_update(r.x_ir, None, self.plan.start, r.keys, den_dtype=self.den_dtype,
                           den_channels_last=self.channels_last, backend=self.backend, out=r.x, den_out=r.den)

    def step(self, r: Runner, i: int, weights: torch.Tensor | None) -> None:
        """Step i: x0̂ = fusion(x_IR, denoise(den), t_i), x ← update_i(x0̂, x), den ← next denoiser input.
        ``weights``: :meth:`time_weights`."""
        last = i == len(self.plan.timesteps) - 1
        x_den = self.denoise(r.den)
        if not ops.fuses(self.fusion, r.x_ir, self.backend):
            x_den = x_den.to(r.x_ir.dtype)
        weights = weights[i:i + 1] if weights is not None else None
        ops.fusion_step(self.fusion, r.x_ir, x_den, self.plan.timesteps[i], r.x, self.plan.updates[i], r.keys,
                        weights, self.dtype, den_dtype=None if last else self.den_dtype,
                        den_channels_last=self.channels_last, backend=self.backend, out=r.x,
                        den_out=None if last else r.den)

    def loop(self, r: Runner) -> None:
        """The whole sampler over ``r``'s buffers: afterwards ``r.x`` holds x0̂."""
        weights = self.time_weights()
        self.start(r)
        for i in range(len(self.plan.timesteps)):
            self.step(r, i, weights)

    # 2. Buckets and graphs -------------------------------------------------------------------------------
    def runner(self, bucket: Bucket) -> Runner:
        """The runner of ``bucket`` (made on first use; the least recently used one goes beyond max_buckets)."""
        r = self.runners.pop(bucket, None)
        if r is None:
            r = Runner(bucket, self.den_dtype, self.channels_last, self._capturable(bucket))
        self.runners[bucket] = r
        while len(self.runners) > self.max_buckets:
            self.runners.popitem(last=False)
        return r

    def _capturable(self, bucket: Bucket) -> bool:
        # only the Triton sampler ops are capture-safe (the reference draws its noise on the host)
        return (bucket.device.type == "cuda" and self.graphs != "off"
                and _backend.resolve("triton", bucket.device, self.backend) == "triton")

    def _capture(self, r: Runner) -> None:
        """Capture the loop over ``r`` (autocast cache off) and hold what the graph reads beside r's buffers."""
        device = r.bucket.device
        if device not in self._pools:
            self._pools[device] = graph_pool(device)
        r.graph = None
        r.versions = versions(self.params)

        def loop() -> None:
            with uncached_autocast(device.type):
                self.loop(r)

        graph = capture_graph(loop, device, self._pools[device])
        r.graph, r.held = graph, (self.time_weights(), ops.fusion_pack(self.fusion, r.x_ir, self.dtype, self.backend))

    def _run(self, r: Runner) -> None:
        r.uses += 1
        if r.graph is not None and r.versions != versions(self.params):
            r.graph, r.held = None, ()   # the weights changed since capture: capture again
        if r.graph is None and not r.eager and r.uses > 1:   # a shape seen once runs eagerly: capture pays on reuse
            try:
                self._capture(r)
            except Exception as error:   # any capture failure: run this bucket eagerly from now on
                if self.graphs == "on":
                    raise RuntimeError(f"CUDA-graph capture of the sampling loop failed: {error}") from error
                r.graph, r.eager = None, True
                if not self._warned:
                    warnings.warn(f"CUDA-graph capture of the sampling loop failed ({type(error).__name__}: "
                                  f"{error}); running eagerly", RuntimeWarning, stacklevel=3)
                    self._warned = True
        if r.graph is not None:
            r.graph.replay()
        else:
            self.loop(r)

    @torch.no_grad()
    def run(self, x_ir: torch.Tensor, seeds: Sequence[int] | torch.Tensor, full_size=None,
            origin=(0, 0)) -> torch.Tensor:
        """x0̂ [B, C, H, W] float32 from the IR estimates x_IR [B, C, H, W].

        ``seeds``, ``full_size``, ``origin``: the noise placement (:func:`~dpir_fast.reference.noise.noise_keys`),
        per image or for the batch, so the crops of a tiled image draw that image's noise.
        """
        keys = noise_keys(seeds, x_ir.shape, full_size, origin)
        r = self.runner(Bucket(*x_ir.shape, x_ir.device))
        r.x_ir.copy_(x_ir)
        r.keys.copy_(keys)
        self._run(r)
        return r.x.clone()
