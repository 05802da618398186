"""The one place that decides which implementation each fused op runs.

Two families of fast ops exist: ``"triton"`` (sampler updates, fused FusionNet; kernels/) and ``"ext"``
(MIRNet's DAU tail and SKFF; the compiled dpir_fast._C). Every op also has a plain-PyTorch
``"reference"``. A caller asks with ``backend``:

- ``"auto"``: the environment variable DPIR_FAST_BACKEND if set, else the op's fast family where it
  runs natively on the tensors' device, else the reference (Triton under the CPU interpreter is a
  correctness tool, far slower than the reference: only an explicit request uses it);
- ``"reference"``: always the reference;
- ``"fast"``: the op's fast family, an error if it cannot run here;
- ``"triton"`` / ``"ext"``: that family for its own ops (an error if it cannot run), reference for the others.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

ENV = "DPIR_FAST_BACKEND"
CHOICES = ("auto", "reference", "fast", "triton", "ext")
FAMILIES = ("triton", "ext")


def check_choice(backend: str) -> str:
    """``backend`` if it is a valid choice, else a ValueError listing the valid ones."""
    if backend not in CHOICES:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(CHOICES)}")
    return backend


def requested() -> str:
    """The backend DPIR_FAST_BACKEND asks for ("auto" when unset)."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not a backend; valid: {', '.join(CHOICES)}")
    return value


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(family: str, device: torch.device | str) -> str | None:
    """Why ``family`` cannot run on ``device`` (None when it can)."""
    device = torch.device(device)
    if family == "triton":
        if not triton_importable():
            return "Triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and interpreting()):
            return None
        return f"Triton kernels run on CUDA devices (or on CPU under TRITON_INTERPRET=1), not on {device}"
    if family == "ext":
        from . import _ext
        return _ext.unavailable_reason(device)
    raise ValueError(f"unknown op family {family!r}; valid: {', '.join(FAMILIES)}")


def resolve(family: str, device: torch.device | str, backend: str = "auto") -> str:
    """The implementation ("reference" or ``family``) an op of ``family`` runs on ``device``."""
    backend = check_choice(backend)
    if backend == "auto":
        backend = requested()
    if backend == "reference" or (backend in FAMILIES and backend != family):
        return "reference"
    reason = unavailable_reason(family, device)
    if backend == "auto":
        interpreted = family == "triton" and torch.device(device).type == "cpu"
        return "reference" if reason or interpreted else family
    if reason:
        raise RuntimeError(f"backend {backend!r} was asked for, but {reason}; use backend='auto' or 'reference'")
    return family


def default_precision(device: torch.device | str) -> tuple[str, str]:
    """The networks' precision when the user names none, and why: bf16 on CUDA; on a CPU bf16 where PyTorch
    reports native bf16 arithmetic (AVX-512 BF16 or AMX: about twice fp32's speed for MIRNet), fp32 elsewhere.
    The sampler's maths stay float32 either way."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16", "CUDA"
    if device.type == "cpu":
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return "bf16", "the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)"
        return "fp32", "the CPU has no native bf16 arithmetic (no AVX-512 BF16 or AMX)"
    return "fp32", f"no bf16 policy for {device.type}"
