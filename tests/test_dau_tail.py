"""dau_tail: the fused op of dpir_fast._C against reference/dau_tail.py::dau_tail_ref (DESIGN.md §4, §5.2).

Random inputs and weights, MIRNet's channel counts, odd sizes, batch > 1, every layout; CUDA cases where a GPU is.
The CUDA op is the extension's dau_attention and the Triton GEMM of kernels/dau_tail.py; that GEMM runs here on
CPU tensors under the interpreter with the GPU's tiling.
"""
import pytest
import torch
import torch.nn.functional as F

from dpir_fast import ops
from dpir_fast.models.mirnet import DAU
from dpir_fast.reference import dau_tail_ref

from .conftest import (DEVICE, LAYOUTS, OP_SHAPES, as_layout, assert_close_to_ref, assert_cuda_graph_replays,
                       nan_cases, op_cases, requires_cuda, requires_ext, with_nans)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_case(B: int, C: int, H: int, W: int, seed: int = 0):
    """(r, x, weights) in float32: r like a conv output, weights at PyTorch's default-init scale."""
    g = torch.Generator().manual_seed(seed)
    r, x = torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)
    cr = max(C // 8, 1)
    weights = [torch.randn(1, 2, 5, 5, generator=g) / 50**0.5, torch.randn(cr, C, 1, 1, generator=g) / C**0.5,
               torch.randn(C, cr, 1, 1, generator=g) / cr**0.5, torch.randn(C, 2 * C, 1, 1, generator=g) / (2 * C)**0.5]
    return r, x, weights


def check(case, dtype, layout, device, op=None):
    r, x, weights = case
    rl, xl = (as_layout(t.to(device, dtype), layout) for t in (r, x))
    op = op or (lambda *args: ops.dau_tail(*args, backend="ext"))
    fast = op(rl, xl, *(w.to(device) for w in weights))
    assert fast.shape == r.shape and fast.dtype == dtype and fast.device == rl.device
    if layout == "channels_last":
        assert fast.is_contiguous(memory_format=torch.channels_last)
    lowp = dau_tail_ref(rl, xl, *(w.to(device) for w in weights))
    ref64 = dau_tail_ref(r.double(), x.double(), *(w.double() for w in weights))
    assert_close_to_ref(fast.cpu(), lowp.cpu(), ref64, dtype)


@op_cases
def test_matches_reference(shape, dtype, layout, device):
    check(make_case(*shape), dtype, layout, device)


@requires_ext
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OP_SHAPES[:5], ids=lambda s: "x".join(map(str, s)))
def test_triton_gemm_matches_reference(shape, dtype, layout, device):
    """kernels/dau_tail.py (dau_attention + the tensor-core GEMM), on the GPU or under the interpreter."""
    from dpir_fast.kernels import dau_tail
    check(make_case(*shape), dtype, layout, device, dau_tail.dau_tail)


@requires_ext
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dau_attention_returns_the_folded_weights_and_spatial_attention(dtype, layout):
    """fold[b, k, o] = W₁[o, k], fold[b, k, C + o] = W₂[o, k]·s_ch[b, k]; s_sp = sigmoid(conv5×5([max_C, mean_C]))."""
    r, _, (w_sa, w_down, w_up, w_out) = make_case(3, 24, 7, 5)
    fold, ssp = torch.ops.dpir_fast.dau_attention(as_layout(r.to(DEVICE, dtype), layout), *(
        w.to(DEVICE) for w in (w_sa, w_down, w_up, w_out)))
    rd = r.to(dtype).double()
    s_ch = torch.sigmoid(F.conv2d(F.relu(F.conv2d(rd.mean((2, 3), keepdim=True), w_down.double())), w_up.double()))
    w1, w2 = w_out.double()[:, :24, 0, 0], w_out.double()[:, 24:, 0, 0]
    expected = torch.cat([w1.t().expand(3, 24, 24), w2.t() * s_ch.view(3, 24, 1)], 2)
    pooled = torch.cat([rd.amax(1, keepdim=True), rd.mean(1, keepdim=True)], 1)
    assert fold.dtype == dtype and fold.shape == (3, 24, 48) and ssp.dtype == torch.float32 and ssp.shape == (3, 7, 5)
    rtol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps   # one rounding of W₂[o, k]·s_ch[b, k]
    torch.testing.assert_close(fold.cpu().double(), expected.to(dtype).double(), rtol=rtol, atol=1e-6)
    torch.testing.assert_close(ssp.cpu().double(), torch.sigmoid(F.conv2d(pooled, w_sa.double(), padding=2))[:, 0],
                               rtol=1e-5, atol=1e-6)


@nan_cases
def test_nan_propagates_as_in_the_reference(shape, dtype, layout, device):
    """NaN in x: NaN at those outputs only. Two NaN in r (image 0): its channel means are NaN, so through the
    channel attention's ReLU all of image 0 is, not just the 5×5 spatial attention around them (where the NaN of
    the mean beside the max-pool hides whether the max kept it)."""
    r, x, weights = make_case(*shape)
    r, x = with_nans(r, 1, 2, [0]), with_nans(x, 2, 20)
    expected = x.isnan()
    expected[0] = True
    assert torch.equal(dau_tail_ref(r, x, *weights).isnan(), expected)
    check((r, x, weights), dtype, layout, device)
    if device == "cpu":  # on CUDA the op above is this path
        from dpir_fast.kernels import dau_tail
        check((r, x, weights), dtype, layout, device, dau_tail.dau_tail)


@requires_ext
def test_module_uses_the_op_in_inference_and_the_reference_under_autograd(monkeypatch):
    torch.manual_seed(0)
    dau = DAU(64, torch.nn.PReLU()).eval()
    r, x, _ = make_case(2, 64, 7, 9)
    calls = []
    monkeypatch.setattr(torch.ops.dpir_fast, "dau_tail", lambda *a: calls.append(1) or dau_tail_ref(*a))
    with torch.no_grad():
        dau.tail(r, x)
    assert calls == [1]
    out = dau.tail(r, x)  # parameters require grad: reference, differentiable
    out.square().sum().backward()
    assert calls == [1] and dau.conv1x1.weight.grad is not None
    dau.backend = "reference"
    with torch.no_grad():
        dau.tail(r, x)
    assert calls == [1]


@requires_ext
def test_bad_arguments_name_the_op_and_argument():
    r, x, (w_sa, w_down, w_up, w_out) = make_case(1, 64, 5, 5)
    with pytest.raises(RuntimeError, match=r"dpir_fast::dau_tail: w_out must be \[64, 128, 1, 1\]"):
        torch.ops.dpir_fast.dau_tail(r, x, w_sa, w_down, w_up, w_out[:, :64])
    with pytest.raises(RuntimeError, match="dpir_fast::dau_tail: x must have the shape"):
        torch.ops.dpir_fast.dau_tail(r, x[:, :32], w_sa, w_down, w_up, w_out)
    with pytest.raises(RuntimeError, match="dpir_fast::dau_tail.*Double"):
        torch.ops.dpir_fast.dau_tail(r.double(), x.double(), w_sa, w_down, w_up, w_out)


@requires_cuda
@requires_ext
def test_cuda_graph_capture_and_replay():
    r, x, weights = make_case(2, 128, 33, 31)
    args = [t.cuda() for t in (r, x, *weights)]
    assert_cuda_graph_replays(torch.ops.dpir_fast.dau_tail, args, args[0])
