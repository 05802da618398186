"""The Triton sampler ops (jump, ancestral_step, ddim_step) against their references.

Without a GPU they run on CPU tensors through TRITON_INTERPRET=1 (tests/conftest.py); with one, on CUDA.
"""
import numpy as np
import pytest
import torch

from dpir_fast import ops
from dpir_fast.reference import (SamplerUpdate, ancestral_step_ref, ddim_step_ref, draw_noise, jump_ref,
                                 sampler_update_ref)
from dpir_fast.schedule import Schedule

from .conftest import RANDN_RTOL, Z_MAX, assert_close_to_ref

pytest.importorskip("triton")
SCHEDULE = Schedule.linear()
SEEDS = [4, 2**40 + 9]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# name → (fast op, its reference, how to call either: call(op, x0̂, x_t, seeds, **keywords))
CASES = {
    "jump": (ops.jump, jump_ref, lambda f, x0, xt, seeds, **k: f(x0, SCHEDULE, 250, seeds, **k)),
    "jump_forward": (ops.jump, jump_ref,
                     lambda f, x0, xt, seeds, **k: f(x0, SCHEDULE, 40, seeds, start="forward", **k)),
    "ancestral_step": (ops.ancestral_step, ancestral_step_ref,
                       lambda f, x0, xt, seeds, **k: f(x0, xt, 40, SCHEDULE, seeds, **k)),
    "ddim_step": (ops.ddim_step, ddim_step_ref,
                  lambda f, x0, xt, seeds, **k: f(x0, xt, 250, 245, SCHEDULE, seeds, eta=0.7, **k)),
}


def inputs(device, dtype, layout, shape=(2, 3, 37, 53)):
    """x0̂ in ``dtype``/``layout``; x_t float32 and non-contiguous (a crop of a wider tensor)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=g).to(device, dtype)
    if layout == "nhwc":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    wide = torch.randn(*shape[:3], shape[3] + 6, generator=g).to(device)
    return x0, wide[..., 3:3 + shape[3]]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_op_equals_its_reference(name, dtype, layout, device):
    fast_op, ref_op, call = CASES[name]
    x0, xt = inputs(device, dtype, layout)
    den_args = dict(den_dtype=dtype, den_channels_last=layout == "nhwc")
    out, den = call(fast_op, x0, xt, SEEDS, backend="triton", **den_args)
    ref_out, ref_den = call(ref_op, x0, xt, SEEDS, **den_args)
    truth_out, truth_den = call(ref_op, x0.double(), xt.double(), SEEDS, den_dtype=torch.float64)
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == x0.shape
    assert den.dtype == dtype and den.shape == (2, 4, 37, 53)
    assert den.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
    slack = Z_MAX * RANDN_RTOL   # z enters out as σ·z and den as σ·z/sqrt(ᾱ), both with a factor < 1 here
    assert_close_to_ref(out, ref_out, truth_out, torch.float32, slack)
    assert_close_to_ref(den, ref_den, truth_den, dtype, slack)
    level = den[:, 3].float()
    assert torch.all(level == level.flatten()[0])   # σ̃: constant (the interpreter truncates to bf16, CUDA rounds)
    assert_close_to_ref(call(fast_op, x0, xt, SEEDS, backend="triton"), ref_out, truth_out, torch.float32, slack)


def test_last_steps_return_x0_hat(device):
    x0, xt = inputs(device, torch.bfloat16, "nhwc")
    assert torch.equal(ops.ancestral_step(x0, xt, 1, SCHEDULE, SEEDS, backend="triton"), x0.float())
    assert torch.equal(ops.ddim_step(x0, xt, 5, 0, SCHEDULE, SEEDS, eta=1.0, backend="triton"), x0.float())


def noise(device, seeds=(7,), step=3, shape=(1, 3, 128, 160), **kw):
    x = torch.zeros(shape, device=device)
    return ops.sampler_update(x, None, SamplerUpdate(0.0, 0.0, 1.0, step), list(seeds), backend="triton", **kw)


def test_in_kernel_noise_is_the_reference_stream_and_tiles_reproduce_it(device):
    whole = noise(device, (5, 6), 10, (2, 3, 37, 53))
    ref = draw_noise([5, 6], 10, (2, 3, 37, 53)).to(device)
    torch.testing.assert_close(whole, ref, rtol=RANDN_RTOL, atol=2e-6)
    crop = noise(device, (5, 6), 10, (2, 3, 11, 20), full_size=(37, 53), origin=(20, 33))
    assert torch.equal(crop, whole[:, :, 20:31, 33:53])
    x0, xt = inputs(device, torch.float32, "nchw")
    tile = ops.ancestral_step(x0[..., 5:17, 9:40], xt[..., 5:17, 9:40], 40, SCHEDULE, SEEDS, full_size=(37, 53),
                              origin=(5, 9), backend="triton")
    assert torch.equal(tile, ops.ancestral_step(x0, xt, 40, SCHEDULE, SEEDS, backend="triton")[..., 5:17, 9:40])


def test_noise_statistics(device):
    z = noise(device)[0].cpu()
    assert abs(z.mean()) < 4 / z.numel() ** 0.5
    assert abs(z.std() - 1) < 0.01
    for a, b in [(z[:, :, :-1], z[:, :, 1:]), (z[:, :-1], z[:, 1:]), (z[:-1], z[1:])]:
        assert abs(np.corrcoef(a.flatten(), b.flatten())[0, 1]) < 0.02
    next_step = noise(device, step=4)[0].cpu()
    assert abs(np.corrcoef(z.flatten(), next_step.flatten())[0, 1]) < 0.02
    assert torch.equal(noise(device)[0].cpu(), z)
    assert not torch.allclose(noise(device, seeds=(8,))[0].cpu(), z)


def test_seeds_as_a_device_tensor_and_bad_seeds(device):
    x0, xt = inputs(device, torch.float32, "nchw")
    seeds = torch.tensor(SEEDS, device=device)
    fast = ops.ancestral_step(x0, xt, 9, SCHEDULE, seeds, backend="triton")
    assert torch.equal(fast, ops.ancestral_step(x0, xt, 9, SCHEDULE, SEEDS, backend="triton"))
    with pytest.raises(ValueError, match="one seed per image"):
        ops.ancestral_step(x0, xt, 9, SCHEDULE, [1], backend="triton")
    with pytest.raises(ValueError, match="does not fit"):
        ops.jump(x0, SCHEDULE, 5, SEEDS, full_size=(37, 50), backend="triton")


def test_sampler_update_reference_keeps_float64():
    x0 = torch.rand(1, 3, 4, 5, dtype=torch.float64)
    out, den = sampler_update_ref(x0, x0, SamplerUpdate(0.5, 0.25, 0.0, 1, 2.0, 0.3), [0],
                                  den_dtype=torch.float64)
    assert out.dtype == den.dtype == torch.float64
    torch.testing.assert_close(den[:, :3], 1.5 * x0)


def test_per_image_noise_keys_and_buffers_written_in_place(device):
    """A batch of crops of two images (per-image full sizes and origins, as tiles share a batch) draws each image's
    reference noise; ``out`` aliasing x_t and ``den_out`` are written in place, a wrong buffer is refused."""
    x0, xt = inputs(device, torch.float32, "nchw", (3, 3, 9, 14))
    x = xt.contiguous()
    den = torch.empty(3, 4, 9, 14, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    update = SamplerUpdate(0.6, 0.3, 0.8, 17, 1.5, 0.25)
    place = dict(full_size=[(37, 53), (20, 30), (37, 53)], origin=[(20, 33), (11, 0), (0, 39)])
    ref, ref_den = sampler_update_ref(x0, x, update, [5, 6, 5], **place, den_dtype=torch.bfloat16)
    out, d = ops.sampler_update(x0, x, update, [5, 6, 5], **place, den_dtype=torch.bfloat16,
                                den_channels_last=True, backend="triton", out=x, den_out=den)
    assert out.data_ptr() == x.data_ptr() and d.data_ptr() == den.data_ptr()
    torch.testing.assert_close(x, ref, rtol=0, atol=2e-6 + 0.8 * Z_MAX * RANDN_RTOL)
    torch.testing.assert_close(den.float(), ref_den.float(), rtol=2 ** -6, atol=0)   # one bf16 step
    whole = draw_noise([5], 17, (1, 3, 37, 53))
    torch.testing.assert_close(ref[0], 0.6 * x0[0] + 0.3 * xt[0] + 0.8 * whole[0, :, 20:29, 33:47].to(device))
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32"):
        ops.sampler_update(x0, xt, update, [5, 6, 5], backend="triton", out=torch.empty_like(x0, dtype=torch.float16))
