"""pytest-benchmark suites of the fused ops and one sampler step, each fast path beside its reference at the same
size: one group per op, size and device, so a regression of any op shows as a number.

    pytest benchmarks/ --benchmark-only            (not part of `python -m pytest`: testpaths is tests/)

ext ops (dau_tail, skff) at MIRNet-S's full-resolution level: reference vs the compiled extension, on CUDA when
present, else on the CPU. Triton ops (sampler_update, fusion_step): CUDA only; on CPU tensors they run only under
TRITON_INTERPRET, whose timings mean nothing. One sampler step (MIRNet-S, then fusion_step: the engine's step):
reference vs "fast" on CUDA, "auto" on the CPU (the extension's DAU/SKFF, the reference sampler ops).
"""
import pytest
import torch

from _workload import autocast, sampler_step
from dpir_fast import _backend, ops
from dpir_fast.models import FusionNet, mirnet_s
from dpir_fast.models.mirnet import DAU, SKFF
from dpir_fast.reference.sampler import ancestral_update
from dpir_fast.schedule import Schedule

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
FEATURES = (4, 64, 128, 128) if CUDA else (1, 64, 64, 64)   # [B, C, H, W] of MIRNet-S's first level
IMAGE = (4, 3, 512, 512) if CUDA else (1, 3, 64, 64)
DTYPE = torch.bfloat16 if CUDA else torch.float32
FAST = "fast" if CUDA else "auto"
TIMESTEP = 3   # a tail timestep (the deblur preset runs 5..1)


def _unavailable(family: str):
    reason = _backend.unavailable_reason(family, DEVICE)
    if family == "triton" and not CUDA:
        reason = "Triton ops are timed on CUDA only (on CPU tensors only TRITON_INTERPRET runs them)"
    return pytest.mark.skipif(reason is not None, reason=str(reason))


def _case(shape) -> str:
    return f"{'x'.join(map(str, shape))} {str(DTYPE).removeprefix('torch.')} {DEVICE.type}"


def _bench(benchmark, group: str, fn) -> None:
    """Time fn() in ``group`` (synchronised on CUDA), under no_grad and the networks' autocast."""
    benchmark.group = group

    def call():
        fn()
        if CUDA:
            torch.cuda.synchronize()

    with torch.no_grad(), autocast(DEVICE, DTYPE):
        benchmark(call)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return mirnet_s().to(DEVICE).eval(), FusionNet().to(DEVICE).eval()


@pytest.fixture(scope="module")
def images(nets):
    """x_IR, x_t [B, 3, H, W] float32, the denoiser input [B, 4, H, W] and its output in the networks' dtype."""
    x_ir, x_t = torch.rand(IMAGE, device=DEVICE), torch.randn(IMAGE, device=DEVICE)
    den_in = torch.cat([x_t, torch.full_like(x_t[:, :1], 0.1)], 1).to(DTYPE)
    with torch.no_grad(), autocast(DEVICE, DTYPE):
        x_den = nets[0](den_in)
    return x_ir, x_t, den_in, x_den


@pytest.mark.parametrize("backend", ["reference", pytest.param("ext", marks=_unavailable("ext"))])
def test_dau_tail(benchmark, nets, backend):
    dau = next(m for m in nets[0].modules() if isinstance(m, DAU))
    r, x = (torch.randn(FEATURES, device=DEVICE, dtype=DTYPE) for _ in "rx")
    w = (dau.SA.spatial.conv.weight, dau.CA.conv_du[0].weight, dau.CA.conv_du[2].weight, dau.conv1x1.weight)
    _bench(benchmark, f"dau_tail {_case(FEATURES)}", lambda: ops.dau_tail(r, x, *w, backend=backend))


@pytest.mark.parametrize("backend", ["reference", pytest.param("ext", marks=_unavailable("ext"))])
def test_skff(benchmark, nets, backend):
    skff = next(m for m in nets[0].modules() if isinstance(m, SKFF))
    feats = [torch.randn(FEATURES, device=DEVICE, dtype=DTYPE) for _ in range(3)]
    w = (skff.conv_du[0].weight, skff.conv_du[1].weight, [fc.weight for fc in skff.fcs])
    _bench(benchmark, f"skff {_case(FEATURES)}", lambda: ops.skff(feats, *w, backend=backend))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=_unavailable("triton"))])
def test_sampler_update(benchmark, images, backend):
    x_ir, x_t, den_in, _ = images
    update, seeds = ancestral_update(Schedule.linear(), TIMESTEP), [0] * IMAGE[0]
    _bench(benchmark, f"sampler_update {_case(IMAGE)}",
           lambda: ops.sampler_update(x_ir, x_t, update, seeds, den_dtype=DTYPE, backend=backend))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=_unavailable("triton"))])
def test_fusion_step(benchmark, nets, images, backend):
    x_ir, x_t, _, x_den = images
    x_den = x_den if backend == "triton" else x_den.float()   # the reference pipeline fuses float32 estimates
    update, seeds = ancestral_update(Schedule.linear(), TIMESTEP), [0] * IMAGE[0]
    _bench(benchmark, f"fusion_step {_case(IMAGE)}",
           lambda: ops.fusion_step(nets[1], x_ir, x_den, TIMESTEP, x_t, update, seeds, den_dtype=DTYPE,
                                   backend=backend))


@pytest.mark.parametrize("backend", ["reference", FAST])
def test_sampler_step(benchmark, nets, images, backend):
    den, fusion = nets
    den.backend = backend
    x_ir, x_t, den_in, _ = images
    update, seeds = ancestral_update(Schedule.linear(), TIMESTEP), [0] * IMAGE[0]
    _bench(benchmark, f"sampler step (MIRNet-S + fusion_step) {_case(IMAGE)}",
           lambda: sampler_step(den, fusion, x_ir, den_in, x_t, TIMESTEP, update, seeds, backend))
