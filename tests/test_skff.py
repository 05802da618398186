"""skff: the fused op of dpir_fast._C against reference/skff.py::skff_ref (DESIGN.md §4, §5.2).

Random streams and weights, MIRNet's channel counts, odd sizes, batch > 1, every layout; CUDA cases where a GPU is.
"""
import pytest
import torch

from dpir_fast import ops
from dpir_fast.models.mirnet import SKFF
from dpir_fast.reference import skff_ref

from .conftest import (as_layout, assert_close_to_ref, assert_cuda_graph_replays, nan_cases, op_cases, requires_cuda,
                       requires_ext, with_nans)


def make_case(B: int, C: int, H: int, W: int, seed: int = 0):
    """(three streams, w_down, prelu, three w_up) in float32, weights at PyTorch's default-init scale."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, C, H, W, generator=g) for _ in range(3)]
    d = max(C // 8, 4)
    w_down = torch.randn(d, C, 1, 1, generator=g) / C**0.5
    w_up = [torch.randn(C, d, 1, 1, generator=g) * 2 / d**0.5 for _ in range(3)]
    return feats, w_down, torch.tensor([0.25]), w_up


def check(case, dtype, layout, device):
    feats, w_down, prelu, w_up = case
    low = [as_layout(f.to(device, dtype), layout) for f in feats]
    weights = (w_down.to(device), prelu.to(device), [w.to(device) for w in w_up])
    fast = ops.skff(low, *weights, backend="ext")
    assert fast.shape == feats[0].shape and fast.dtype == dtype and fast.device == low[0].device
    if layout == "channels_last":
        assert fast.is_contiguous(memory_format=torch.channels_last)
    ref64 = skff_ref([f.double() for f in feats], w_down.double(), prelu.double(), [w.double() for w in w_up])
    assert_close_to_ref(fast.cpu(), skff_ref(low, *weights).cpu(), ref64, dtype)


@op_cases
def test_matches_reference(shape, dtype, layout, device):
    check(make_case(*shape), dtype, layout, device)


@nan_cases
def test_nan_propagates_as_in_the_reference(shape, dtype, layout, device):
    """NaN in a stream makes its image's pooled mean, hence its softmax and all of its output, NaN."""
    feats, *weights = make_case(*shape)
    feats = [with_nans(f, seed, 1, [0]) for seed, f in enumerate(feats)]
    nan = skff_ref(feats, *weights).isnan()
    assert nan[0].all() and not nan[1:].any()
    check((feats, *weights), dtype, layout, device)


@requires_ext
def test_module_uses_the_op_only_for_three_streams_without_autograd(monkeypatch):
    torch.manual_seed(0)
    feats, *_ = make_case(2, 32, 6, 5)
    calls = []
    monkeypatch.setattr(torch.ops.dpir_fast, "skff", lambda *a: calls.append(1) or skff_ref(a[:3], a[3], a[4], a[5:]))
    with torch.no_grad():
        SKFF(32).eval()(feats)
        SKFF(32, height=2).eval()(feats[:2])
    assert calls == [1]
    module = SKFF(32)
    module(feats).sum().backward()
    assert calls == [1] and module.fcs[0].weight.grad is not None


@requires_ext
def test_bad_arguments_name_the_op_and_argument():
    feats, w_down, prelu, w_up = make_case(1, 64, 4, 4)
    with pytest.raises(RuntimeError, match=r"dpir_fast::skff: w_up1 must be \[64, 8, 1, 1\]"):
        torch.ops.dpir_fast.skff(*feats, w_down, prelu, w_up[0], w_up[1][:, :4], w_up[2])
    with pytest.raises(RuntimeError, match="dpir_fast::skff: prelu must have 1 or d = 8 slopes"):
        torch.ops.dpir_fast.skff(*feats, w_down, torch.ones(3), *w_up)
    with pytest.raises(RuntimeError, match="dpir_fast::skff: x2 must have dtype"):
        torch.ops.dpir_fast.skff(feats[0], feats[1], feats[2].bfloat16(), w_down, prelu, *w_up)


@requires_cuda
@requires_ext
def test_cuda_graph_capture_and_replay():
    feats, w_down, prelu, w_up = make_case(2, 128, 33, 31)
    args = [t.cuda() for t in (*feats, w_down, prelu, *w_up)]
    assert_cuda_graph_replays(torch.ops.dpir_fast.skff, args, args[1])
