"""Static evidence for the CUDA path on a machine without a GPU (DESIGN.md §4, Roofline): per kernel, for an
NVIDIA target, registers, spills, shared memory and the tensor-core instructions in its SASS.

``python kernels/compile_check.py 90 [80] [--dtypes float32,bfloat16,float16]`` reads two sets of kernels:

- Triton: the real host code runs on CPU tensors with every launch replaced by compilation (Triton's frontend,
  LLVM, the bundled ptxas), so each variant the fast path launches is compiled once; spills come from ptxas -v,
  the rest from the cubin Triton built.
- ``dpir_fast._C``: every function in the built extension's sm_XX ELF (``--ext`` reads another .so or cubin).
  A built binary does not record spills, only each function's stack frame. No sm_XX ELF: the output says so.

One table per set; the exit status is non-zero when a Triton kernel spills, a _C function has a stack frame,
a kernel asks for more shared memory than the device has, or a GEMM-shaped kernel (named in GEMM_KERNELS and
EXT_GEMM_KERNELS) has no tensor-core instruction: a GEMM on CUDA cores wastes most of the GPU's FLOPs. The
instruction's types show the precision (``HGMMA.F32.BF16``; float32 should read ``TF32``). TRITON_INTERPRET
must not be set.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# GEMM-shaped Triton kernels -> whether compile_all must launch them (a missing required one fails the check).
GEMM_KERNELS = {"conv3x3_kernel": True, "conv_out_kernel": True, "dau_tail_kernel": True}
# _C functions whose name contains one of these are GEMM-shaped (output_kernel: the CUDA-core FMA GEMM of DAU's tail).
EXT_GEMM_KERNELS = ("output_kernel",)


class _CompileOnlyDriver:
    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _ptxas_spills(ptx: str, arch: int) -> int:
    """Spill-store bytes ptxas reports for one kernel, run with the flags Triton's own ptxas call uses."""
    from dpir_fast.kernels.cubin_usage import triton_tool
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}"]
    log = subprocess.run([triton_tool("ptxas"), *flags, f.name, "-o", os.devnull], capture_output=True, text=True,
                         check=True).stderr
    os.unlink(f.name)
    return sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", log))


def compile_all(arch: int, dtypes=("float32", "bfloat16", "float16")) -> list[dict]:
    """Run the fast path's host code on CPU tensors, compiling each launch for sm_<arch>; one row per variant."""
    import torch
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from dpir_fast import _ext, ops
    from dpir_fast.kernels import dau_tail
    from dpir_fast.kernels.cubin_usage import usage
    from dpir_fast.models import FusionNet
    from dpir_fast.reference import ancestral_update
    from dpir_fast.schedule import Schedule

    seen: dict[tuple, dict] = {}
    tmp = tempfile.TemporaryDirectory()

    def compile_only(self, grid):
        def launch(*args, **kwargs):
            # Triton keeps compiled kernels per device, not per target: drop those of an earlier arch (checking
            # 80 then 90 in one process otherwise reported sm_80 code in the sm_90 table)
            if any(entry[2] != driver.active.get_current_target() for entry in self.device_caches.values()):
                self.device_caches.clear()
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            dtype = next(str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor))
            name = self.fn.__name__
            variant = " ".join([dtype] + [f"{k}={v}" for k, v in sorted(kwargs.items()) if k.isupper()])
            if (name, variant) not in seen:
                cubin = Path(tmp.name) / f"{len(seen)}.cubin"
                cubin.write_bytes(kernel.asm["cubin"])
                used = usage(cubin)[kernel.metadata.name]
                seen[name, variant] = dict(used, kernel=name, variant=variant, shared=kernel.metadata.shared,
                                           spills=_ptxas_spills(kernel.asm["ptx"], arch), gemm=name in GEMM_KERNELS)
        return launch

    saved, saved_driver = JITFunction.__getitem__, driver._active
    driver.set_active(_CompileOnlyDriver(arch))
    JITFunction.__getitem__ = compile_only
    try:
        k, update = ops._kernels(), ancestral_update(Schedule.linear(), 30)
        x, seeds = torch.rand(2, 3, 64, 64), torch.tensor([1, 2])
        for dtype in (getattr(torch, name) for name in dtypes):
            x_den = x.to(dtype).contiguous(memory_format=torch.channels_last)
            k.affine_update(x_den, x, update.a, update.b, update.sigma, update.stream, seeds, update.den_scale,
                            update.den_level, den_dtype=dtype, den_channels_last=True)
            k.affine_update(x_den, None, 1.0, 0.0, 1.0, 0, seeds, full_size=(70, 70), origin=(1, 2))
            k.fusion_forward(FusionNet(), x, x_den, torch.rand(1, 64), dtype, seeds, x, update.a, update.b,
                             update.sigma, update.stream, update.den_scale, update.den_level, den_dtype=dtype)
            k.fusion_forward(FusionNet(act="lrelu", residual="none", n_decoder_blocks=1, padding="reflect"), x, x_den,
                             torch.rand(1, 64), dtype, seeds)
            if _ext.load() is not None:   # dau_tail's attention half (dau_attention) runs in the extension
                for c in (64, 128, 256):  # MIRNet-S's levels, channels_last as the denoiser runs them
                    r = torch.randn(1, c, 8, 8, dtype=dtype).contiguous(memory_format=torch.channels_last)
                    dau_tail.dau_tail(r, r, torch.randn(1, 2, 5, 5), torch.randn(c // 8, c, 1, 1),
                                      torch.randn(c, c // 8, 1, 1), torch.randn(c, 2 * c, 1, 1))
    finally:
        JITFunction.__getitem__ = saved
        driver._active = saved_driver
        tmp.cleanup()
    return list(seen.values())


def ext_rows(arch: int, binary: Path | None = None) -> tuple[list[dict], str]:
    """One row per function in the sm_<arch> ELF of ``binary`` (default: the built _C), and a line saying what
    was read or why nothing was."""
    from dpir_fast import _ext
    from dpir_fast.kernels.cubin_usage import demangle, elf_archs, usage

    if binary is None:
        spec = importlib.util.find_spec("dpir_fast._C")
        if spec is None or not spec.origin:
            return [], "dpir_fast._C is not built: not checked"
        binary = Path(spec.origin)
    if arch not in elf_archs(binary):
        built = (_ext.build_info() or {}).get("arch_list")
        return [], f"{binary.name} has no sm_{arch} code (build_info arch_list={built!r}): not checked"
    used = usage(binary, arch)
    names = demangle(list(used))
    rows = [dict(u, kernel=names[f][0], variant=f"<{names[f][1]}>" if names[f][1] else "", spills=None,
                 gemm=any(f"{len(g)}{g}" in f for g in EXT_GEMM_KERNELS)) for f, u in used.items()]
    return rows, f"{binary}, sm_{arch} ELF"


def problems(row: dict, arch: int) -> list[str]:
    """What fails in one row; a built binary does not record spills, so there any stack frame fails."""
    found = []
    if row["spills"]:
        found.append("spills")
    elif row["spills"] is None and (row["stack"] or row["local"]):
        found.append("stack (spills?)")
    if row["shared"] > SHARED_LIMIT.get(arch, 99 * 1024):
        found.append("shared>limit")
    if row["gemm"] and not row["mma"]:
        found.append("GEMM on CUDA cores")
    return found


def table(title: str, rows: list[dict], arch: int) -> int:
    """Print the rows under a header; the number of failing rows."""
    print(f"\n{title}\n{'kernel':<26} {'regs':>4} {'spill':>5} {'stack':>5} {'shared':>6}  {'tensor cores':<16} "
          f"{'check':<32} variant")
    failed = 0
    for row in rows:
        bad = problems(row, arch)
        failed += bool(bad)
        mma = ",".join(row["mma"]) or ("NONE" if row["gemm"] else "-")
        spills = "?" if row["spills"] is None else row["spills"]
        print(f"{row['kernel']:<26} {row['regs']:>4} {spills:>5} {row['stack'] + row['local']:>5} "
              f"{row['shared']:>6}  {mma:<16} {'FAIL ' + ', '.join(bad) if bad else 'ok':<32} {row['variant']}")
    return failed


def check(arch: int, dtypes: list[str], ext: Path | None = None) -> tuple[int, list[str]]:
    """Print sm_<arch>'s tables; the number of failing rows and summary lines."""
    import triton
    rows = compile_all(arch, dtypes)
    failed = table(f"sm_{arch} Triton {triton.__version__} kernels, every launched variant ({','.join(dtypes)}); "
                   "spill: ptxas spill-store bytes, stack: frame bytes, shared: dynamic bytes", rows, arch)
    summary = [f"sm_{arch} Triton: {failed} of {len(rows)} variants fail"]
    for name, required in GEMM_KERNELS.items():
        if not any(row["kernel"] == name for row in rows):
            failed += required
            summary.append(f"sm_{arch} Triton: GEMM-shaped {name} was not launched"
                           + (": FAIL" if required else " (not required yet)"))
    rows, note = ext_rows(arch, ext)
    if rows:
        bad = table(f"sm_{arch} _C kernels in {note}; spill: not recorded, shared: static bytes", rows, arch)
        failed += bad
        summary.append(f"sm_{arch} _C: {bad} of {len(rows)} functions fail")
    else:
        summary.append(f"sm_{arch} _C: {note}")
    return failed, summary


def main(archs: list[int], dtypes: list[str], ext: Path | None = None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the check compiles for a GPU target")
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    failed, summary = 0, []
    for arch in archs:
        n, lines = check(arch, dtypes, ext)
        failed, summary = failed + n, summary + lines
    print("\n" + "\n".join(summary) + f"\n{'FAIL' if failed else 'ok'}: {failed} failing")
    return 1 if failed else 0


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", type=int, default=[80, 90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--ext", type=Path, help="read this binary (.so or .cubin) instead of the built _C")
    args = parser.parse_args()
    sys.exit(main(args.archs, args.dtypes.split(","), args.ext))
