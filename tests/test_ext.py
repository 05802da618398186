"""dpir_fast._C as a whole: fallback without it, build record, mismatch message, fake kernels, MIRNet-S end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpir_fast import _backend, _ext
from dpir_fast.models import mirnet_s

from .conftest import as_layout, assert_close_to_ref, requires_ext
from .test_dau_tail import make_case as dau_case
from .test_skff import make_case as skff_case

REPO = Path(__file__).resolve().parents[1]

FALLBACK = r"""
import sys, warnings
import torch
if sys.argv[1] == "blocked":  # the import system cannot find _C, as when it was never built
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "dpir_fast._C":
                raise ModuleNotFoundError("No module named 'dpir_fast._C'", name=name)
    sys.meta_path.insert(0, Blocker())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dpir_fast
    from dpir_fast import _backend, ops
    from dpir_fast.models import MIRNet
    from dpir_fast.reference import dau_tail_ref, skff_ref
    assert not caught and "dpir_fast._C" not in sys.modules, "import dpir_fast must not load or warn"
    g = torch.Generator().manual_seed(0)
    r, x = torch.randn(2, 16, 5, 7, generator=g), torch.randn(2, 16, 5, 7, generator=g)
    w = [torch.randn(1, 2, 5, 5, generator=g), torch.randn(2, 16, 1, 1, generator=g),
         torch.randn(16, 2, 1, 1, generator=g), torch.randn(16, 32, 1, 1, generator=g)]
    s = [torch.randn(4, 16, 1, 1, generator=g), torch.tensor([0.25])] + [torch.randn(16, 4, 1, 1) for _ in range(3)]
    with torch.no_grad():
        assert torch.equal(ops.dau_tail(r, x, *w), dau_tail_ref(r, x, *w))
        assert torch.equal(ops.skff([r, x, r], s[0], s[1], s[2:]), skff_ref([r, x, r], s[0], s[1], s[2:]))
        MIRNet(in_channels=4, n_feat=8, n_rrg=1, n_msrb=1).eval()(torch.rand(1, 4, 8, 8))
    assert _backend.resolve("ext", "cpu") == "reference"
messages = [str(m.message) for m in caught if "dpir_fast._C" in str(m.message)]
assert len(messages) == 1, messages
print(messages[0])
"""


@pytest.mark.parametrize("mode, expect", [("env", "disabled by DPIR_FAST_DISABLE_EXT=1"), ("blocked", "not built")])
def test_fallback_without_the_extension(mode, expect):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop(_ext.DISABLE_ENV, None)
    env.pop(_backend.ENV, None)
    if mode == "env":
        env[_ext.DISABLE_ENV] = "1"
    result = subprocess.run([sys.executable, "-c", FALLBACK, mode], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert expect in result.stdout and "reference" in result.stdout


def test_mismatch_message(monkeypatch, tmp_path):
    stale = {"torch": "2.0.0+cu118", "cuda": "11.8", "nvcc": "11.8", "arch_list": "8.0"}
    message = _ext.mismatch(stale, "2.14.1+cu130", "13.0")
    assert "built for torch 2.0.0+cu118 (CUDA 11.8) but torch 2.14.1+cu130 (CUDA 13.0) is running" in message
    assert "pip install --no-build-isolation -e ." in message
    assert _ext.mismatch({"torch": "2.14.1", "cuda": None}, "2.14.1", None) is None
    assert "CPU only" in _ext.mismatch({"torch": "2.14.1", "cuda": "13.0"}, "2.14.1", None)
    # a load that fails next to a stale record explains itself, warns once, and leaves the reference in charge
    (tmp_path / "info.json").write_text(json.dumps(stale))
    monkeypatch.setattr(_ext, "BUILD_INFO", tmp_path / "info.json")
    monkeypatch.setattr(_ext, "MODULE", "dpir_fast._no_such_extension")
    monkeypatch.setattr(_ext, "_state", {})
    monkeypatch.delenv(_ext.DISABLE_ENV, raising=False)
    monkeypatch.delenv(_backend.ENV, raising=False)
    with pytest.warns(RuntimeWarning, match="built for torch 2.0.0"):
        assert _ext.unavailable_reason("cpu").startswith("dpir_fast._C was built for torch 2.0.0")
    assert _backend.resolve("ext", "cpu") == "reference"
    with pytest.raises(RuntimeError, match="backend 'ext' was asked for, but dpir_fast._C was built for"):
        _backend.resolve("ext", "cpu", "ext")


@requires_ext
def test_build_record_matches_the_running_torch():
    info = _ext.build_info()
    assert info is not None and info["torch"] == torch.__version__ and _ext.mismatch(info) is None
    assert {"dau_tail.cpp", "skff.cpp", "registration.cpp"} <= set(info["sources"])
    if info["cuda"]:  # built by nvcc: the CUDA kernels are registered even with no GPU here
        assert {"dau_tail_kernel.cu", "skff_kernel.cu"} <= set(info["sources"]) and _ext.has_cuda_kernels()
        # dau_tail's CUDA kernel: the extension's dau_attention, then the Triton GEMM, registered on load
        assert torch._C._dispatch_has_kernel_for_dispatch_key("dpir_fast::dau_tail", "CUDA")
        fresh = subprocess.run([sys.executable, "-c", "from dpir_fast import _ext; print(_ext.has_cuda_kernels())"],
                               capture_output=True, text=True, check=True)
        assert fresh.stdout.strip() == "True"   # as the first call in a process (it loads _C itself)
    assert _ext.unavailable_reason("cpu") is None


@requires_ext
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fake_kernels_and_compile(layout):
    r, x, weights = dau_case(2, 16, 7, 9)
    r, x = as_layout(r, layout), as_layout(x, layout)
    feats, w_down, prelu, w_up = skff_case(2, 16, 7, 9)
    feats = [as_layout(f, layout) for f in feats]
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.dpir_fast.dau_tail.default, (r, x, *weights), test_utils=tests)
    torch.library.opcheck(torch.ops.dpir_fast.dau_attention.default, (r, *weights), test_utils=tests)
    torch.library.opcheck(torch.ops.dpir_fast.skff.default, (*feats, w_down, prelu, *w_up), test_utils=tests)

    def both(r, x, a, b, c):
        return torch.ops.dpir_fast.skff(torch.ops.dpir_fast.dau_tail(r, x, *weights), b, c, w_down, prelu, *w_up)

    compiled = torch.compile(both, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(r, x, *feats), both(r, x, *feats))


@requires_ext
@pytest.mark.parametrize("dtype, layout", [(torch.float32, "contiguous"), (torch.bfloat16, "channels_last")])
def test_mirnet_s_forward_with_the_ops_matches_the_reference(dtype, layout):
    torch.manual_seed(0)
    model = mirnet_s().eval()
    x = torch.rand(2, 4, 12, 16)
    with torch.no_grad():
        model.double().backend = "reference"
        ref64 = model(x.double())
        model.to(dtype, memory_format=torch.channels_last if layout == "channels_last" else torch.preserve_format)
        xl = as_layout(x.to(dtype), layout)
        ref_lowp = model(xl)
        model.backend = "ext"
        fast = model(xl)
    assert_close_to_ref(fast, ref_lowp, ref64, dtype)
