"""The fused FusionNet (Triton implicit-GEMM convolutions) against models.FusionNet with the same weights.

Under TRITON_INTERPRET=1, bf16 tiles are multiplied as float32 (the interpreter's tl.dot reads bf16 as
raw integers); CUDA runs them on tensor cores. Both accumulate in float32.
"""
import copy

import pytest
import torch

from dpir_fast import ops
from dpir_fast.models import FusionNet
from dpir_fast.reference import ancestral_update, ddim_update, fusion_step_ref
from dpir_fast.schedule import Schedule

from .conftest import assert_close_to_ref

pytest.importorskip("triton")
SMALL = dict(n_feat=16, growth=8, time_hidden=16)


@pytest.fixture(autouse=True)
def no_grad():
    """The fused network is forward-only (with gradients wanted, "auto" runs the module)."""
    with torch.no_grad():
        yield


def make(device, seed=0, **config):
    torch.manual_seed(seed)
    net = FusionNet(**config).to(device).eval()
    for p in net.parameters():   # non-zero biases and a visible time branch
        p.data.add_(0.05 * torch.randn_like(p))
    return net


def estimates(device, shape, den_dtype=torch.float32):
    """x_IR float32 NCHW; x_den in ``den_dtype``, channels_last, as a denoiser under autocast returns it."""
    g = torch.Generator().manual_seed(1)
    x_ir = torch.rand(shape, generator=g).to(device)
    x_den = (x_ir + 0.1 * torch.randn(shape, generator=g).to(device)).to(den_dtype)
    return x_ir, x_den.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def references(net, x_ir, x_den, t, dtype):
    """(reference at ``dtype`` under autocast, reference in float64)."""
    if dtype == torch.float32:
        low = net(x_ir, x_den.float(), t)
    else:
        with torch.autocast(x_ir.device.type, dtype=dtype):
            low = net(x_ir, x_den, t)
    return low.float(), copy.deepcopy(net).double()(x_ir.double(), x_den.double(), t)


@pytest.mark.parametrize("t", [1, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fused_fusionnet_equals_the_module(dtype, t, device):
    net = make(device, **SMALL)
    x_ir, x_den = estimates(device, (2, 3, 13, 11), dtype)
    fast = ops.fusion(net, x_ir, x_den, t, dtype=dtype, backend="triton")
    assert fast.dtype == torch.float32 and fast.shape == x_ir.shape
    assert_close_to_ref(fast, *references(net, x_ir, x_den, t, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_default_config_real_channel_counts(dtype, device):
    net = make(device)
    x_ir, x_den = estimates(device, (1, 3, 9, 7), dtype)
    assert_close_to_ref(ops.fusion(net, x_ir, x_den, 250, dtype=dtype, backend="triton"),
                        *references(net, x_ir, x_den, 250, dtype),
                        dtype)


@pytest.mark.parametrize("config", [dict(act="lrelu", residual="none"), dict(n_decoder_blocks=0),
                                    dict(n_decoder_blocks=1, res_scale=0.5, in_channels=4),
                                    dict(padding="replicate"), dict(padding="reflect", act="lrelu")], ids=str)
def test_other_configs(config, device):
    net = make(device, **{**SMALL, **config})
    x_ir, x_den = estimates(device, (2, net.config["in_channels"], 6, 5))
    t = torch.tensor([3, 700], device=device)       # one timestep per image
    assert_close_to_ref(ops.fusion(net, x_ir, x_den, t, backend="triton"),
                        *references(net, x_ir, x_den, t, torch.float32),
                        torch.float32)


def test_gpu_tiling_chunks_and_edges(monkeypatch, device):
    """The GPU's tile sizes: several 2-D patches per image across and down (edges on both), several K chunks,
    several N tiles."""
    fusion_net = ops._kernels().fusion_net
    monkeypatch.setattr(fusion_net, "INTERPRETER_TILES", False)
    monkeypatch.setattr(fusion_net, "MAX_BLOCK_N", 16)
    net = make(device, n_feat=32, growth=8, time_hidden=8, padding="reflect")
    x_ir, x_den = estimates(device, (2, 3, 13, 37), torch.bfloat16)
    assert_close_to_ref(ops.fusion(net, x_ir, x_den, 40, dtype=torch.bfloat16, backend="triton"),
                        *references(net, x_ir, x_den, 40, torch.bfloat16), torch.bfloat16)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_the_sampler_update_in_the_last_conv(layout, device):
    net, schedule = make(device, **SMALL), Schedule.linear()
    x_ir, x_den = estimates(device, (2, 3, 13, 11))
    if layout == "nhwc":
        x_ir = x_ir.contiguous(memory_format=torch.channels_last)
    x_t = torch.randn(2, 3, 13, 16, device=device)[..., 2:13]
    seeds = [3, 8]
    for update in (ancestral_update(schedule, 30), ddim_update(schedule, 250, 245, eta=0.5)):
        kw = dict(full_size=(20, 30), origin=(4, 9), den_dtype=torch.bfloat16, den_channels_last=layout == "nhwc")
        out, den = ops.fusion_step(net, x_ir, x_den, 30, x_t, update, seeds, **kw, backend="triton")
        ref_out, ref_den = fusion_step_ref(net, x_ir, x_den, 30, x_t, update, seeds, **kw)
        truth_out, truth_den = fusion_step_ref(copy.deepcopy(net).double(), x_ir.double(), x_den.double(), 30,
                                               x_t.double(), update, seeds, kw["full_size"], kw["origin"],
                                               torch.float64)
        assert_close_to_ref(out, ref_out, truth_out, torch.float32)
        assert_close_to_ref(den, ref_den, truth_den, torch.bfloat16)
        assert den.is_contiguous(memory_format=torch.channels_last) == (layout == "nhwc")


def test_per_image_noise_keys_and_the_update_in_place(device):
    """Tiles of two images in one batch (per-image placement) and x_next written over x_t, as the engine runs it."""
    net, update = make(device, **SMALL), ancestral_update(Schedule.linear(), 30)
    x_ir, x_den = estimates(device, (2, 3, 13, 11))
    x_t = torch.randn(2, 3, 13, 11, device=device)
    place = dict(full_size=[(20, 30), (13, 11)], origin=[(4, 9), (0, 0)])
    ref = fusion_step_ref(net, x_ir, x_den, 30, x_t, update, [3, 8], **place)
    truth = fusion_step_ref(copy.deepcopy(net).double(), x_ir.double(), x_den.double(), 30, x_t.double(), update,
                            [3, 8], **place)
    out = ops.fusion_step(net, x_ir, x_den, 30, x_t, update, [3, 8], **place, backend="triton", out=x_t)
    assert out.data_ptr() == x_t.data_ptr()
    assert_close_to_ref(x_t, ref, truth, torch.float32)


def test_weights_are_repacked_when_the_parameters_change(device):
    net = make(device, **SMALL)
    x_ir, x_den = estimates(device, (1, 3, 5, 4))
    def fused():
        return ops.fusion(net, x_ir, x_den, 9, backend="triton")

    before = fused()
    assert torch.equal(fused(), before)   # cached pack, same result
    net.conv_out.bias.add_(0.5)
    torch.testing.assert_close(fused(), before + 0.5, rtol=0, atol=1e-5)
    net.load_state_dict(make(device, seed=1, **SMALL).state_dict())
    assert_close_to_ref(fused(), *references(net, x_ir, x_den, 9, torch.float32), torch.float32)


def test_time_weights_for_a_list_of_steps(device):
    net = make(device, **SMALL)
    w = ops.fusion_time_weights(net, [5, 4, 3])
    assert w.shape == (3, 16) and w.dtype == torch.float32
    torch.testing.assert_close(w[1], net.time_weights(4)[0])


def test_replicate_and_reflect_padding_keep_a_flat_input_flat(device):
    """The point of those modes: a constant input gives one value at every pixel, borders and corners included
    (with zero padding the same weights do not)."""
    flat = torch.full((1, 3, 9, 14), 0.4, device=device)
    for padding in ("zeros", "replicate", "reflect"):
        out = ops.fusion(make(device, **SMALL, padding=padding), flat, flat, 5, backend="triton")
        spread = (out - out[:, :, 4:5, 7:8]).abs().max()
        assert spread > 1e-3 if padding == "zeros" else spread < 1e-5


def test_user_modules_run_as_themselves_and_unfusable_fusionnets_are_errors(device):
    class Custom(FusionNet):
        def forward(self, x_ir, x_den, t):
            return super().forward(x_ir, x_den, t) * 0.5

    x_ir, x_den = estimates(device, (1, 3, 5, 4))
    custom = Custom(**SMALL).to(device).eval()
    torch.testing.assert_close(ops.fusion(custom, x_ir, x_den, 3, backend="triton"), custom(x_ir, x_den, 3))
    net = make(device, **SMALL)
    net.conv_out = torch.nn.Conv2d(16, 3, 5, padding=2).to(device)
    with pytest.raises(ValueError, match="3×3 convolutions"):
        ops.fusion(net, x_ir, x_den, 3, backend="triton")
    mixed = make(device, **SMALL)
    mixed.conv_in.padding_mode = "reflect"   # one conv unlike the others: the module, or a clear error
    with pytest.raises(ValueError, match="padding mode"):
        ops.fusion(mixed, x_ir, x_den, 3, backend="triton")
    torch.testing.assert_close(ops.fusion(net, x_ir, x_den, 3), net(x_ir, x_den, 3))


def test_with_gradients_wanted_auto_runs_the_module_and_triton_is_an_error(device):
    net = make(device, **SMALL)
    x_ir, x_den = estimates(device, (1, 3, 5, 4))
    with torch.enable_grad():
        out = ops.fusion(net, x_ir, x_den, 3)
        assert out.requires_grad
        with pytest.raises(RuntimeError, match="forward-only"):
            ops.fusion(net, x_ir, x_den, 3, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the tests above compile and run the kernels")
def test_every_kernel_variant_compiles_for_sm90():
    """Triton's frontend, LLVM and ptxas for an H100/H200 target on this CPU machine, then kernels/compile_check.py's
    rules on every Triton variant and, where _C was built for sm_90, every _C function: no spills, shared memory
    within the device, GEMM-shaped kernels on tensor cores (``python kernels/compile_check.py 80 90`` adds A100)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from dpir_fast import _ext

    script = Path(__file__).resolve().parent.parent / "kernels" / "compile_check.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script), "90", "--dtypes", "float32,bfloat16"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.strip()]
    convs = [row for row in rows if row[0] in ("conv3x3_kernel", "conv_out_kernel", "dau_tail_kernel")]
    assert sum(row[0] == "conv3x3_kernel" for row in convs) >= 10 and any(row[0] == "conv_out_kernel" for row in convs)
    assert any(row[0] == "dau_tail_kernel" for row in convs) == (_ext.load_error() is None)
    # column 6 is the tensor-core instruction: bf16 operands for bfloat16, TF32 for float32
    assert any(row[5].endswith(".BF16") for row in convs) and any(row[5].endswith(".TF32") for row in convs)
    info = _ext.build_info() or {}
    if info.get("cuda") and re.search(r"(^|[;\s])9\.0", info.get("arch_list") or ""):
        assert "sm_90 _C kernels in" in run.stdout and any("weighted_sum" in row[0] for row in rows)
