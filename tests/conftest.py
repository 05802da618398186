"""Test setup: Triton kernels run on CPU tensors through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before Triton is first imported, hence here, before anything else.
"""
import os
import shutil

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

requires_cuda = pytest.mark.cuda   # skipped without a CUDA device (pytest_collection_modifyitems)


def pytest_collection_modifyitems(items):
    """Mark ``cuda`` every test that runs on a GPU, so that ``pytest -m cuda`` selects them (scripts/gpu_check.sh):
    the ``requires_cuda`` ones, those with a ``device`` parameter "cuda", and on a CUDA machine every test taking
    the ``device`` fixture. Without a CUDA device the marked ones are skipped."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        device = callspec.params.get("device", DEVICE) if callspec else DEVICE
        if "device" in getattr(item, "fixturenames", ()) and device == "cuda":
            item.add_marker(pytest.mark.cuda)
        if not torch.cuda.is_available() and item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def _ext_error() -> str | None:
    from dpir_fast import _ext
    return _ext.load_error()


requires_ext = pytest.mark.skipif(_ext_error() is not None, reason=f"needs dpir_fast._C: {_ext_error()}")
LAYOUTS = ("contiguous", "channels_last", "sliced")
# MIRNet's channel counts at odd sizes with batch > 1, small and odd channel counts, one larger image
OP_SHAPES = [(2, 64, 13, 11), (3, 128, 37, 53), (2, 256, 9, 15), (1, 8, 1, 1), (3, 24, 5, 7), (2, 64, 64, 96)]


def assert_cuda_graph_replays(op, args: list, changed: torch.Tensor) -> None:
    """Capture op(*args) in a CUDA graph, refill ``changed`` (one of args) in place, replay: equals an eager call."""
    op(*args)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(*args)
    changed.copy_(torch.randn_like(changed))
    graph.replay()
    torch.testing.assert_close(out, op(*args))


def ext_cases(shapes, dtypes, layouts):
    """Decorator: an extension-op test over device (CUDA where present) × shapes × dtypes × layouts."""
    def parametrize(test):
        test = pytest.mark.parametrize("layout", layouts)(test)
        test = pytest.mark.parametrize("dtype", dtypes)(test)
        test = pytest.mark.parametrize("shape", shapes, ids=lambda s: "x".join(map(str, s)))(test)
        test = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])(test)
        return requires_ext(test)
    return parametrize


op_cases = ext_cases(OP_SHAPES, [torch.float32, torch.bfloat16, torch.float16], LAYOUTS)
# NaN inputs: the CUDA kernels' scalar and 16-byte paths in both layouts (HW = 143 and 96, C = 64 and 20)
nan_cases = ext_cases([(3, 64, 13, 11), (2, 20, 8, 12)], [torch.float32, torch.bfloat16],
                      ["contiguous", "channels_last"])


def with_nans(t: torch.Tensor, seed: int, count: int, images=slice(None)) -> torch.Tensor:
    """A copy of ``t`` [B, ...] with NaN at ``count`` random positions of the batch images ``images``."""
    rank = torch.rand(t.shape, generator=torch.Generator().manual_seed(seed))
    rank[images] -= 1  # the chosen images' positions first
    return t.flatten().index_fill(0, rank.flatten().argsort()[:count], float("nan")).view(t.shape)


def as_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` [B, C, H, W] (same values) contiguous, channels_last, or a non-contiguous slice of a larger tensor."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        big = torch.zeros(t.shape[0], 2 * t.shape[1], t.shape[2], t.shape[3] + 1, dtype=t.dtype, device=t.device)
        big[:, ::2, :, 1:] = t
        return big[:, ::2, :, 1:]
    return t.contiguous()


@pytest.fixture
def device() -> str:
    """The device the Triton kernels run on in this session (CPU tensors under the interpreter)."""
    return DEVICE

# Absolute slack per dtype on top of PyTorch's own error at that precision (DESIGN.md §5.2).
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# tl.randn against reference/noise.py, given equal Philox words and uniforms: the interpreter's numpy float32 libm
# agrees to rounding (the tests' 2e-6 absolute); CUDA's libdevice log and cos (flush-to-zero) and sqrt.approx agree
# to about 1e-6 relative: RANDN_RTOL = 1e-5 there. As |z| ≤ sqrt(−2 ln 1e-7) < Z_MAX (tl.randn clamps u₁ at 1e-7),
# σ·Z_MAX·RANDN_RTOL bounds that in an output adding σ·z to other terms.
RANDN_RTOL = 1e-5 if DEVICE == "cuda" else 0.0
Z_MAX = 5.7


def assert_close_to_ref(fast: torch.Tensor, ref_lowp: torch.Tensor, ref_fp64: torch.Tensor,
                        dtype: torch.dtype, slack: float = 0.0) -> None:
    """err(fast − ref_fp64) ≤ 2·err(ref_lowp − ref_fp64) + atol[dtype] + slack, errors as max-abs over the
    positions where ref_fp64 is not NaN; fast must be NaN exactly where ref_fp64 is.

    ``ref_lowp`` is the reference computed at ``dtype`` (its error is what that precision costs),
    ``ref_fp64`` the reference in float64; ``slack``: what fast may differ by beyond rounding (tl.randn on CUDA).
    """
    truth = ref_fp64.to(torch.float64)
    nan = truth.isnan()
    wrong = (fast.isnan() != nan).sum().item()
    assert wrong == 0, f"fast is NaN at {wrong} positions where the reference is not, or the other way round"
    err_fast = (fast.to(torch.float64) - truth).masked_fill(nan, 0).abs().max().item()
    err_ref = (ref_lowp.to(torch.float64) - truth).masked_fill(nan, 0).abs().max().item()
    bound = 2 * err_ref + ATOL[dtype] + slack
    assert err_fast <= bound, f"fast error {err_fast:.3g} > bound {bound:.3g} (reference error {err_ref:.3g})"


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module, restored after: tiny convolutions run fastest on one thread, and far
    slower on two when the cores are busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
