"""The one place that loads the compiled extension ``dpir_fast._C`` (csrc/: MIRNet's ``dau_tail`` and ``skff``).

On CUDA, ``dau_tail`` is the extension's ``dau_attention`` followed by a Triton GEMM (kernels/dau_tail.py), which
loading registers as the op's CUDA kernel when Triton is importable.

Loading is lazy: ``import dpir_fast`` never touches _C; the first op that asks for the "ext" family (through
``_backend``) loads it. A failure is kept, explained (a torch/extension version mismatch gets its own sentence)
and warned about once per process; the ops then run their reference. ``DPIR_FAST_DISABLE_EXT=1`` hides the
extension as if it were not built.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

MODULE = "dpir_fast._C"
DISABLE_ENV = "DPIR_FAST_DISABLE_EXT"
BUILD_INFO = Path(__file__).with_name("_build_info.json")
REBUILD = "rebuild it with `pip install --no-build-isolation -e .`"
_state: dict = {}  # "module" or "error" once load() has run; "warned" after the one warning


def build_info() -> dict | None:
    """The record setup.py wrote beside _C: torch, cuda (None for a CPU build), nvcc, arch_list, sources."""
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return None


def mismatch(info: dict | None, torch_version: str = torch.__version__,
             cuda_version: str | None = torch.version.cuda) -> str | None:
    """A sentence when _C was built for another torch or CUDA than the running one, else None."""
    if not info:
        return None
    built = f"torch {info.get('torch')}" + (f" (CUDA {info['cuda']})" if info.get("cuda") else "")
    running = f"torch {torch_version}" + (f" (CUDA {cuda_version})" if cuda_version else " (CPU only)")
    if info.get("torch") != torch_version or (info.get("cuda") and info["cuda"] != cuda_version):
        return f"dpir_fast._C was built for {built} but {running} is running; {REBUILD}"
    return None


def explain(err: BaseException, info: dict | None = None) -> str:
    """Why _C did not load, in a sentence, from the import error and the build record."""
    hint = mismatch(info)
    if hint:
        return f"{hint} ({type(err).__name__}: {err})"
    if isinstance(err, ModuleNotFoundError) and err.name == MODULE:
        return f"dpir_fast._C is not built; {REBUILD}"
    return f"dpir_fast._C failed to load ({type(err).__name__}: {err}); {REBUILD}"


def load(warn: bool = True) -> ModuleType | None:
    """The loaded dpir_fast._C (its import registers the ops under torch.ops.dpir_fast), or None.

    On failure the reason is kept (:func:`load_error`) and, with ``warn``, one warning is issued per process.
    """
    if not _state:
        if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
            _state["error"] = f"dpir_fast._C is disabled by {DISABLE_ENV}=1"
        else:
            try:
                _state["module"] = importlib.import_module(MODULE)
            except Exception as err:  # noqa: BLE001 -- a broken build must never break `import dpir_fast`
                _state["error"] = explain(err, build_info())
            else:
                if has_cuda_kernels():
                    _register_triton_gemm()
    if "error" in _state and warn and not _state.get("warned"):
        _state["warned"] = True
        warnings.warn(f"{_state['error']}. MIRNet's attention ops (dau_tail, skff) run the PyTorch reference.",
                      RuntimeWarning, stacklevel=3)
    return _state.get("module")


def _register_triton_gemm() -> None:
    """dau_tail's CUDA kernel: dau_attention and the Triton GEMM of kernels/dau_tail.py, when Triton is installed."""
    try:
        from dpir_fast.kernels import dau_tail
    except ModuleNotFoundError as err:
        if err.name != "triton":
            raise
        return
    dau_tail.register()


def load_error() -> str | None:
    """Why _C is not loaded (None when it is); does not warn."""
    load(warn=False)
    return _state.get("error")


def has_cuda_kernels() -> bool:
    """Whether the loaded _C registered CUDA kernels (it was built with nvcc)."""
    if load(warn=False) is None:   # (load calls this once _C is imported: no recursion)
        return False
    if "cuda" not in _state:  # (an extension built before dau_attention existed has no such op: not ours)
        _state["cuda"] = hasattr(torch.ops.dpir_fast, "dau_attention") and \
            torch._C._dispatch_has_kernel_for_dispatch_key("dpir_fast::dau_attention", "CUDA")
    return _state["cuda"]


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the extension's ops cannot run on ``device`` (None when they can); used by ``_backend``."""
    device = torch.device(device)
    if load() is None:
        return _state["error"]
    if device.type == "cuda" and has_cuda_kernels() and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "dpir_fast::dau_tail", "CUDA"):
        return "dau_tail's CUDA GEMM is a Triton kernel and Triton is not installed (pip install triton)"
    if device.type == "cpu" or (device.type == "cuda" and has_cuda_kernels()):
        return None
    if device.type == "cuda":
        return "dpir_fast._C was built without CUDA kernels (no nvcc or a CPU-only torch when it was built)"
    return f"dpir_fast._C has CPU and CUDA kernels, not {device.type} ones"
