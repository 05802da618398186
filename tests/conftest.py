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

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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


def op_cases(test):
    """An extension-op test over device (CUDA where present) × OP_SHAPES × float32/bfloat16/float16 × LAYOUTS."""
    test = pytest.mark.parametrize("layout", LAYOUTS)(test)
    test = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])(test)
    test = pytest.mark.parametrize("shape", OP_SHAPES, ids=lambda s: "x".join(map(str, s)))(test)
    test = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])(test)
    return requires_ext(test)


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


def assert_close_to_ref(fast: torch.Tensor, ref_lowp: torch.Tensor, ref_fp64: torch.Tensor,
                        dtype: torch.dtype) -> None:
    """err(fast − ref_fp64) ≤ 2·err(ref_lowp − ref_fp64) + atol[dtype], errors as max-abs.

    ``ref_lowp`` is the reference computed at ``dtype`` (its error is what that precision costs),
    ``ref_fp64`` the reference in float64.
    """
    truth = ref_fp64.to(torch.float64)
    err_fast = (fast.to(torch.float64) - truth).abs().max().item()
    err_ref = (ref_lowp.to(torch.float64) - truth).abs().max().item()
    bound = 2 * err_ref + ATOL[dtype]
    assert err_fast <= bound, f"fast error {err_fast:.3g} > bound {bound:.3g} (reference error {err_ref:.3g})"


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module, restored after: tiny convolutions run fastest on one thread, and far
    slower on two when the cores are busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
