"""Compile every Triton kernel variant the fast path launches for an NVIDIA target, without a GPU.

``python kernels/compile_check.py 80 90 [--dtypes float32,bfloat16,float16]`` runs the real host code on CPU tensors with launches replaced by
compilation (Triton's frontend, LLVM and the bundled ptxas), then prints shared memory, registers and
spills per variant. It fails on a compile error or on shared memory over the device's limit: what a CPU
machine can check of the CUDA path. TRITON_INTERPRET must not be set.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


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


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill-store bytes) ptxas reports for one kernel."""
    import triton
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    log = subprocess.run([str(ptxas), "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull], capture_output=True,
                         text=True, check=True).stderr
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else 0


def compile_all(arch: int, dtypes=("float32", "bfloat16", "float16")) -> list[dict]:
    """Run the fast path's host code on CPU tensors, compiling each launch for sm_<arch>."""
    import torch
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from dpir_fast import ops
    from dpir_fast.models import FusionNet
    from dpir_fast.reference import ancestral_update
    from dpir_fast.schedule import Schedule

    seen: dict[tuple, dict] = {}

    def compile_only(self, grid):
        def launch(*args, **kwargs):
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            consts = tuple(sorted((k, str(v)) for k, v in kwargs.items() if k.isupper()))
            if (self.fn.__name__, consts) not in seen:
                regs, spills = _ptxas_usage(kernel.asm["ptx"], arch)
                seen[self.fn.__name__, consts] = dict(kernel=self.fn.__name__, shared=kernel.metadata.shared,
                                                      regs=regs, spills=spills, **dict(consts))
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
            k.fusion_forward(FusionNet(act="lrelu", residual="none", n_decoder_blocks=1), x, x_den,
                             torch.rand(1, 64), dtype, seeds)
    finally:
        JITFunction.__getitem__ = saved
        driver._active = saved_driver
    return list(seen.values())


def main(archs: list[int], dtypes: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the check compiles for a GPU target")
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    failed = False
    for arch in archs:
        for row in compile_all(arch, dtypes):
            over = row["shared"] > SHARED_LIMIT.get(arch, 99 * 1024)
            failed |= over
            flag = "  SHARED MEMORY OVER" if over else ""
            print(f"sm_{arch} " + " ".join(f"{k}={v}" for k, v in row.items()) + flag)
    return 1 if failed else 0


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", type=int, default=[80, 90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    args = parser.parse_args()
    sys.exit(main(args.archs, args.dtypes.split(",")))
