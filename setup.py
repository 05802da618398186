"""Build script. Package metadata lives in pyproject.toml; kernels/ installs as dpir_fast.kernels.

dpir_fast._C is built from csrc/*.cpp (+ csrc/*.cu): a CUDAExtension when torch has CUDA and nvcc is found (or
DPIR_FAST_FORCE_CUDA=1), a CppExtension otherwise, none with DPIR_FAST_SKIP_EXT=1. MAX_JOBS and
TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX" when no GPU is visible) are honoured. Next to _C the build writes
_build_info.json (torch, CUDA, arch list), which dpir_fast._ext reads to explain a torch/extension mismatch.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _nvcc_version(cuda_home: str) -> str | None:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True)
    except OSError:
        return None
    found = re.search(r"release (\d+\.\d+)", out.stdout)
    return found.group(1) if found else None


def _find_cuda_home() -> None:
    """Set CUDA_HOME to a toolkit with headers when unset (nvcc on PATH may be a wrapper script outside it)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or not shutil.which("nvcc"):
        return
    nvcc_dir = Path(os.path.realpath(shutil.which("nvcc"))).parent.parent
    for home in [nvcc_dir, Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]:
        if (home / "include" / "cuda_runtime.h").is_file():
            os.environ["CUDA_HOME"] = str(home)
            return


def extension() -> dict:
    """ext_modules and cmdclass for dpir_fast._C, or nothing when skipped."""
    if _flag("DPIR_FAST_SKIP_EXT"):
        return {}
    _find_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except ImportError:
        print("dpir_fast: torch is not importable at build time (use --no-build-isolation); building without _C")
        return {}

    with_cuda = _flag("DPIR_FAST_FORCE_CUDA") or (torch.version.cuda is not None and ce.CUDA_HOME is not None)
    if with_cuda and not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    sources = [os.path.relpath(p, ROOT) for p in sorted(ROOT.glob("csrc/*.cpp"))]
    sources += [os.path.relpath(p, ROOT) for p in sorted(ROOT.glob("csrc/*.cu"))] if with_cuda else []
    args = {"cxx": ["-O3", "-fopenmp", "-DDPIR_FAST_PYTHON_MODULE"]}
    if with_cuda:
        args["nvcc"] = ["-O3", "-lineinfo"]
        # CUDA headers PyTorch's headers include but a bare toolkit may lack (cublas_v2.h, cusparse.h) come with
        # torch's nvidia wheels; -isystem puts them after the toolkit's own include directory.
        major = (torch.version.cuda or "").split(".")[0]
        wheel_include = Path(torch.__file__).parent.parent / "nvidia" / f"cu{major}" / "include"
        if major and wheel_include.is_dir():
            args["nvcc"] += ["-isystem", str(wheel_include)]
            args["cxx"] += ["-isystem", str(wheel_include)]
    make = ce.CUDAExtension if with_cuda else ce.CppExtension
    ext = make("dpir_fast._C", sources, include_dirs=[str(ROOT / "csrc")], extra_compile_args=args,
               extra_link_args=["-fopenmp"])
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "nvcc": _nvcc_version(ce.CUDA_HOME) if with_cuda and ce.CUDA_HOME else None,
        "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs") if with_cuda else None,
        "sources": [Path(s).name for s in sources],
    }

    class BuildExtension(ce.BuildExtension):
        def run(self):
            super().run()
            for package in {Path(self.build_lib) / "dpir_fast", *([ROOT / "dpir_fast"] if self.inplace else [])}:
                if package.is_dir():
                    (package / "_build_info.json").write_text(json.dumps(info, indent=1) + "\n")

    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    packages=find_packages(include=["dpir_fast", "dpir_fast.*"]) + ["dpir_fast.kernels"],
    package_dir={"dpir_fast.kernels": "kernels"},
    **extension(),
)
