"""What run.py measures: a task's networks at the paper's configurations (random weights), its input, the FLOP
split of one image, the three backends, and the per-component callables (IR net, denoiser, fusion, one sampler
step, the extension ops)."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from dpir_fast import DPIR, _backend, ops
from dpir_fast.models import FusionNet, bsrt_small, fftformer_gopro, mirnet_s, swinir_classical_sr4
from dpir_fast.models.mirnet import DAU, SKFF
from dpir_fast.pipeline import DTYPES, PRESETS, run_network
from dpir_fast.reference.sampler import ancestral_update, ddim_update, sample_timesteps

# task → (IR net constructor at its official configuration, output/input scale)
TASKS = {"deblur": (fftformer_gopro, 1), "sr4x": (swinir_classical_sr4, 4), "burst": (bsrt_small, 8)}
BURST_FRAMES = 14
T = 1000   # the schedule's length: the unaccelerated chain's denoiser+fusion steps
EXT_COMPONENTS = ("dau_tail", "skff")   # the extension's ops alone: not timed under torch.compile
COMPONENTS = ("ir net", "denoiser", "fusion", "sampler step", *EXT_COMPONENTS)
FLOP_NOTES = ["FLOPs per image from torch.utils.flop_counter.FlopCounterMode on fake tensors (shapes only) through "
              "the real modules at their official configurations; the denoiser with its reference DAU/SKFF ops",
              "FlopCounterMode has no formula for FFTs (FFTformer's attention and FFN), so they count 0",
              "added formulas: aten._scaled_dot_product_flash_attention_for_cpu as PyTorch's other SDPA kernels "
              "(SwinIR, BSRT on CPU), torchvision::deform_conv2d as the 2·MACs of its convolution (BSRT)"]


def input_shape(task: str, batch: int, width: int, height: int) -> tuple[int, ...]:
    """The IR net's input for outputs [B, 3, H, W]: [B, 3, H/s, W/s], or a burst [B, 14, 4, H/8, W/8]."""
    scale = TASKS[task][1]
    if task == "burst":
        return batch, BURST_FRAMES, 4, height // scale, width // scale
    return batch, 3, height // scale, width // scale


def build_modules(task: str, seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(IR net, MIRNet-S, FusionNet) on the CPU in eval mode, random weights from ``seed``."""
    torch.manual_seed(seed)
    return TASKS[task][0]().eval(), mirnet_s().eval(), FusionNet().eval()


def make_input(task: str, batch: int, width: int, height: int, device: torch.device) -> torch.Tensor:
    """A random degraded input in [0, 1] for outputs of ``width`` × ``height``."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(input_shape(task, batch, width, height), generator=g).to(device)


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _deform_conv_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x, weight, out_shape)


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode with formulas for the CPU's SDPA kernel and torchvision's deformable convolution (when
    torchvision is installed: only BSRT needs it)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    try:
        import torchvision.ops  # noqa: F401  (registers torch.ops.torchvision)
        mapping[torch.ops.torchvision.deform_conv2d] = _deform_conv_flops
    except ImportError:
        pass
    return FlopCounterMode(display=False, custom_mapping=mapping)


@torch.no_grad()
def count_flops(task: str, modules, width: int, height: int, t: int) -> dict[str, int]:
    """FLOPs of one image: the IR net once (``ir``), the denoiser on [1, 4, H, W] and the fusion on
    (x_IR, x_den, t), each [1, 3, H, W] (``denoiser``, ``fusion``), through fake tensors: no compute, any size.
    ``modules``: (ir, denoiser, fusion) on the CPU, copied first (a network may cache size-dependent buffers,
    which would stay fake); the denoiser is counted on its reference DAU/SKFF ops."""
    ir, den, fusion = copy.deepcopy(modules)
    den.backend = "reference"
    counts = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(1, 3, height, width)
        calls = {"ir": lambda: run_network(ir, torch.empty(input_shape(task, 1, width, height)), TASKS[task][1]),
                 "denoiser": lambda: run_network(den, torch.empty(1, 4, height, width)),
                 "fusion": lambda: fusion(x, x, t)}
        for name, call in calls.items():
            with flop_counter() as counter:
                call()
            counts[name] = counter.get_total_flops()
    return counts


def cost_split(task: str, modules, width: int, height: int) -> dict:
    """The cost of one image at the task's preset: x = denoiser + fusion, y = IR net (FLOPs), NFE = 1 + NFE_s,
    total = x·NFE_s + y, and the chain's x·T + y."""
    preset = PRESETS[task]
    flops = count_flops(task, modules, width, height, preset["tau"])
    nfe_s = len(sample_timesteps(preset["tau"], preset["tail"], preset["tail_steps"]))   # pipe.nfe − 1
    x, y = flops["denoiser"] + flops["fusion"], flops["ir"]
    return {**flops, "x": x, "y": y, "nfe": nfe_s + 1, "nfe_sampler": nfe_s, "total": x * nfe_s + y,
            "chain_total": x * T + y, "size": [width, height],
            "formula": "total = x·NFE_s + y; x = denoiser + fusion, y = IR net, NFE_s = NFE − 1"}


@dataclass
class Backend:
    """A pipeline as one backend runs it: ``ops`` is the backend string its fused ops get in component timings."""

    name: str
    pipe: DPIR
    ops: str
    note: str = ""


def make_backend(name: str, task: str, modules, precision: tuple[str, bool], batch: int) -> Backend:
    """reference: DPIR(backend="reference"); compile: that with torch.compile on the IR net, denoiser and fusion;
    fast: DPIR(backend="fast"); each at ``precision`` (dtype name, channels_last). ``batch`` images go through
    the networks together (``batch_size``)."""
    ir, den, fusion = modules
    dtype, channels_last = precision
    kw = dict(dtype=dtype, channels_last=channels_last, batch_size=batch)
    if name == "compile":
        pipe = DPIR.preset(task, ir, den, fusion, backend="reference", **kw)
        pipe.ir, pipe.denoiser, pipe.fusion = (torch.compile(m) for m in modules)
        return Backend(name, pipe, "reference", "torch.compile (default mode) of the IR net, denoiser and fusion "
                                                "in the reference pipeline")
    return Backend(name, DPIR.preset(task, ir, den, fusion, backend=name, **kw), name)


def default_dtype(device: torch.device) -> torch.dtype:
    """The networks' precision DPIR picks when given none (``_backend.default_precision``)."""
    return DTYPES[_backend.default_precision(device)[0]]


def autocast(device: torch.device, dtype: torch.dtype):
    """The networks' autocast for ``dtype`` (none for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sampler_step(den: nn.Module, fusion: nn.Module, x_ir: torch.Tensor, den_in: torch.Tensor, x_t: torch.Tensor,
                 t: int, update, seeds, backend: str):
    """One DP-IR step as the engine runs it: x_den = denoiser(den_in [B, 4, H, W]), then ops.fusion_step:
    x_next = a·Fusion(x_IR, x_den, t) + b·x_t + σ·z [B, 3, H, W] float32 and the next denoiser input
    [B, 4, H, W] in den_in's dtype."""
    x_den = run_network(den, den_in)
    if not ops.fuses(fusion, x_ir, backend):
        x_den = x_den.to(x_ir.dtype)
    return ops.fusion_step(fusion, x_ir, x_den, t, x_t, update, seeds, den_dtype=den_in.dtype, backend=backend)


def first_update(pipe: DPIR, t: int):
    """The sampler update leaving the first tail timestep ``t`` (ancestral t → t − 1, or DDIM to the next)."""
    s = pipe.settings
    if s["tail"] == "ancestral":
        return ancestral_update(pipe.schedule, t)
    steps = sample_timesteps(pipe.tau, s["tail"], s["tail_steps"])
    return ddim_update(pipe.schedule, t, steps[1] if len(steps) > 1 else 0, s["eta"])


@torch.no_grad()
def components(b: Backend, modules, y: torch.Tensor, dtype: torch.dtype) -> dict[str, Callable | None]:
    """Callables of each component at the pipeline's sizes (None where it does not apply: the standalone
    extension ops under torch.compile). Call them under :func:`autocast` and no_grad."""
    pipe, dev = b.pipe, y.device
    x_ir = pipe.restore_ir(y)
    t = sample_timesteps(pipe.tau, pipe.settings["tail"], pipe.settings["tail_steps"])[0]
    seeds = [0] * x_ir.shape[0]
    channels_last = pipe.settings["channels_last"]   # the engine's denoiser layout
    with autocast(dev, dtype):
        x_t, den_in = ops.jump(x_ir, pipe.schedule, pipe.tau, seeds, den_dtype=dtype, den_channels_last=channels_last,
                               backend=b.ops)
        x_den = run_network(pipe.denoiser, den_in)
    x_den = x_den if ops.fuses(pipe.fusion, x_ir, b.ops) else x_den.to(x_ir.dtype)
    update = first_update(pipe, t)
    calls = {"ir net": lambda: pipe.restore_ir(y),
             "denoiser": lambda: run_network(pipe.denoiser, den_in),
             "fusion": lambda: ops.fusion(pipe.fusion, x_ir, x_den, t, backend=b.ops),
             "sampler step": lambda: sampler_step(pipe.denoiser, pipe.fusion, x_ir, den_in, x_t, t, update, seeds,
                                                  b.ops)}
    if b.name == "compile":
        return {**calls, **dict.fromkeys(EXT_COMPONENTS)}
    dau = next(m for m in modules[1].modules() if isinstance(m, DAU))
    skff = next(m for m in modules[1].modules() if isinstance(m, SKFF))
    shape = (x_ir.shape[0], dau.conv1x1.out_channels, *x_ir.shape[-2:])   # MIRNet-S's full-resolution level
    r, x, f1, f2 = (torch.randn(shape, device=dev, dtype=dtype) for _ in range(4))
    w_dau = (dau.SA.spatial.conv.weight, dau.CA.conv_du[0].weight, dau.CA.conv_du[2].weight, dau.conv1x1.weight)
    w_skff = (skff.conv_du[0].weight, skff.conv_du[1].weight, [fc.weight for fc in skff.fcs])
    return {**calls, "dau_tail": lambda: ops.dau_tail(r, x, *w_dau, backend=b.ops),
            "skff": lambda: ops.skff([r, f1, f2], *w_skff, backend=b.ops)}
