"""What the machine code of compiled CUDA kernels uses, read without a GPU: registers, stack, shared memory and
tensor-core instructions per function, from a cubin (one Triton kernel) or from the sm_XX ELF inside a built
extension (.so).

It runs the ``cuobjdump`` that Triton's wheel ships (``-res-usage`` and ``-sass``), so no CUDA toolkit is needed.
ptxas puts register spills in the per-thread stack frame: STACK > 0 means spills (or a local array), i.e.
local-memory traffic. Tensor-core use is read from the SASS, not the PTX, because the SASS is what runs:
HMMA (``mma.sync``), HGMMA (``wgmma``, sm_90), and the integer/fp8/fp64 MMAs; the types in the opcode say the
precision, e.g. ``HGMMA.F32.BF16`` (bf16 in, fp32 accumulate) or ``HMMA.F32.TF32``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

MMA = re.compile(r"\b(HMMA|HGMMA|IMMA|IGMMA|QGMMA|DMMA|BMMA)\.([\w.]+)")
RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)\s*$", re.MULTILINE)


def triton_tool(name: str) -> str:
    """Path of a CUDA binary utility Triton's wheel ships: ptxas, cuobjdump, nvdisasm."""
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def cuobjdump(*args: str) -> str:
    """stdout of Triton's cuobjdump (its 'switching to Old format' warnings on stderr are dropped)."""
    return subprocess.run([triton_tool("cuobjdump"), *args], capture_output=True, text=True, check=True).stdout


def elf_archs(binary: Path) -> set[int]:
    """The compute capabilities with SASS (an ELF) in ``binary``, e.g. {80, 90}; sm_90a counts as 90."""
    return {int(a) for a in re.findall(r"\.sm_(\d+)a?\.cubin", cuobjdump("-lelf", str(binary)))}


def mma_kind(opcode: str, suffix: str) -> str:
    """``HGMMA`` + ``64x64x16.F32.BF16`` -> ``HGMMA.F32.BF16``: the instruction and its types, shape dropped."""
    return ".".join([opcode] + [p for p in suffix.split(".") if p and not p[0].isdigit()])


def usage(binary: Path, arch: int | None = None) -> dict[str, dict]:
    """Per (mangled) function in ``binary``'s sm_<arch> ELF (every ELF when None): regs, stack, shared (static
    bytes), local, and mma (sorted tensor-core instruction kinds, empty when it has none)."""
    only = ["-arch", f"sm_{arch}"] if arch else []
    out = {m[1]: dict(regs=int(m[2]), stack=int(m[3]), shared=int(m[4]), local=int(m[5]), mma=[])
           for m in RES.finditer(cuobjdump("-res-usage", *only, str(binary)))}
    parts = SASS_FUNCTION.split(cuobjdump("-sass", *only, str(binary)))
    for name, body in zip(parts[1::2], parts[2::2]):
        kinds = {mma_kind(op, suffix) for op, suffix in MMA.findall(body)}
        out.setdefault(name, dict(regs=-1, stack=0, shared=0, local=0, mma=[]))["mma"] = sorted(kinds)
    return out


def demangle(names: list[str]) -> dict[str, tuple[str, str]]:
    """mangled -> (function name, template arguments), e.g. ``('output_kernel', 'Half, 32, 1, false')``.

    Uses c++filt when it is installed; otherwise the mangled name stands as it is."""
    plain = names
    if shutil.which("c++filt"):
        plain = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                               check=True).stdout.splitlines()
    result = {}
    for mangled, text in zip(names, plain):
        text = text.replace("(anonymous namespace)::", "").replace("c10::", "")
        m = re.match(r"(?:void )?(?:[\w:]+::)?(\w+)(?:<(.*?)>)?\(", text)
        result[mangled] = (m[1], m[2] or "") if m else (mangled, "")
    return result
