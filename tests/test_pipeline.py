import pytest
import torch

from dpir_fast import DPIR
from dpir_fast.models._common import dihedral, undo_dihedral
from dpir_fast.pipeline import run_network

from .helpers import tiny_pipeline


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


@pytest.mark.parametrize("task,nfe", [("deblur", 6), ("burst", 6), ("sr4x", 51)])
def test_presets_have_the_papers_nfe(task, nfe):
    # module hooks count evaluations on the reference path (the fused FusionNet never calls the module)
    pipe = tiny_pipeline(task, backend="reference")
    counts = [count_calls(pipe.ir), count_calls(pipe.denoiser), count_calls(pipe.fusion)]
    out = pipe(torch.rand(1, 3, 6, 5))
    assert pipe.nfe == nfe
    assert [len(c) for c in counts] == [1, nfe - 1, nfe - 1]
    assert out.shape == (1, 3, 12, 10) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1


def test_seeds_fix_the_output():
    pipe = tiny_pipeline()
    y = torch.rand(2, 3, 9, 7)
    a = pipe(y, seed=4)
    assert torch.equal(a, pipe(y, seed=4))
    assert not torch.allclose(a, pipe(y, seed=5))
    # image b of a batch draws with seed + b: the same as that image alone with that seed
    torch.testing.assert_close(a[1:], pipe(y[1:], seed=5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, pipe(y, seed=[4, 5]), rtol=0, atol=0)


def test_odd_sizes_and_an_ir_net_multiple():
    pipe = tiny_pipeline(tau=2)
    assert pipe.alignment == 4   # the tiny SwinIR's window; x2 keeps MIRNet's multiple of 4
    for h, w in [(3, 3), (5, 13), (17, 3)]:
        assert pipe(torch.rand(1, 3, h, w)).shape == (1, 3, 2 * h, 2 * w)
    with pytest.raises(ValueError, match="1x2 image is too small .* at least 3 pixels"):
        pipe(torch.rand(1, 3, 1, 2))


@pytest.mark.parametrize("bad,error", [
    (lambda: [[0.5]], "torch tensor"),
    (lambda: torch.rand(3, 8, 8), "batch dimension"),
    (lambda: torch.rand(1, 4, 8, 8), "takes 3 channels"),
    (lambda: torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "y.float\\(\\) / 255"),
    (lambda: torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (lambda: torch.full((1, 3, 8, 8), float("inf")), "NaN or inf"),
    (lambda: torch.rand(1, 3, 8, 8) * 255, "divide 8-bit data by 255"),
    (lambda: torch.rand(0, 3, 8, 8), "empty"),
])
def test_bad_inputs_get_clear_errors(bad, error):
    with pytest.raises(ValueError, match=error):
        tiny_pipeline()(bad())


def test_slightly_out_of_range_input_is_clamped_with_a_warning():
    pipe = tiny_pipeline(tau=1)
    y = torch.rand(1, 3, 8, 8) * 1.2 - 0.1
    with pytest.warns(UserWarning, match="clamping"):
        out = pipe(y)
    torch.testing.assert_close(out, pipe(y.clamp(0, 1)))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown backend 'cuda'; valid: auto, reference"):
        tiny_pipeline(backend="cuda")
    with pytest.raises(ValueError, match="tau must lie"):
        tiny_pipeline(tau=0)
    with pytest.raises(ValueError, match="tail_steps"):
        tiny_pipeline(tau=10, tail="ddim", tail_steps=11)
    with pytest.raises(ValueError, match="task must be one of"):
        tiny_pipeline("denoise")
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        tiny_pipeline(channels_last="nchw")
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="seeds"):
        pipe(torch.rand(2, 3, 4, 4), seed=[1])


# the 8 flips/transpositions and their inverses, written out (x.mT: transpose of the last two dimensions)
FLIPS = [(lambda x: x, lambda o: o), (lambda x: x.flip(-1), lambda o: o.flip(-1)),
         (lambda x: x.flip(-2), lambda o: o.flip(-2)), (lambda x: x.flip(-2, -1), lambda o: o.flip(-2, -1)),
         (lambda x: x.mT, lambda o: o.mT), (lambda x: x.flip(-1).mT, lambda o: o.mT.flip(-1)),
         (lambda x: x.flip(-2).mT, lambda o: o.mT.flip(-2)), (lambda x: x.flip(-2, -1).mT, lambda o: o.mT.flip(-2, -1))]


def test_dihedral_gives_the_eight_flips_and_transpositions_and_undoes_them():
    x = torch.rand(2, 3, 5, 5)
    seen = set()
    for k, (forward, _) in enumerate(FLIPS):
        assert torch.equal(dihedral(x, k), forward(x))
        assert torch.equal(undo_dihedral(dihedral(x, k), k), x)
        seen.add(dihedral(x, k).numpy().tobytes())
    assert len(seen) == 8
    assert dihedral(torch.rand(1, 3, 4, 7), 5).shape == (1, 3, 7, 4)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_the_ir_self_ensemble_averages_the_ir_net_over_flipped_inputs(n):
    pipe = tiny_pipeline(tau=2, ir_ensemble=n)
    y = torch.rand(2, 3, 8, 12)   # not square: a transposed input has another shape
    with torch.no_grad():
        expected = sum(back(pipe.ir(forward(y))) for forward, back in FLIPS[:n]) / n
        single = pipe.ir(y)
    calls = count_calls(pipe.ir)
    torch.testing.assert_close(pipe.restore_ir(y), expected, rtol=1e-5, atol=1e-6)
    assert (pipe.restore_ir(y) - single).abs().max() > 1e-4   # the tiny SwinIR is no flip-invariant net
    assert len(calls) == 2 * n and pipe.nfe == n + 2
    # the sampler starts from the averaged estimate: as a plain pipeline whose IR net averages by itself
    averaged = Averaged(pipe.ir, n)
    plain = DPIR(averaged, pipe.denoiser, pipe.fusion, tau=2, dtype="fp32")
    torch.testing.assert_close(pipe(y, seed=1), plain(y, seed=1), rtol=1e-5, atol=1e-5)


class Averaged(torch.nn.Module):
    """An IR net that averages ``net`` over the first n of FLIPS itself."""

    def __init__(self, net, n):
        super().__init__()
        self.net, self.n, self.scale, self.size_multiple = net, n, net.scale, net.size_multiple

    def forward(self, x):
        return sum(back(self.net(forward(x))) for forward, back in FLIPS[:self.n]) / self.n


def test_ir_ensemble_is_validated_and_refused_for_raw_bursts():
    for bad in (3, 0, 16, True, "8"):
        with pytest.raises(ValueError, match=r"ir_ensemble must be one of \(1, 2, 4, 8\)"):
            tiny_pipeline(ir_ensemble=bad)
    pipe = tiny_pipeline("burst")
    pipe.ir.input_kind, pipe.ir.burst_frames = "burst", 2   # as BSRT declares itself
    with pytest.raises(ValueError, match="Bayer pattern"):
        pipe.configure(ir_ensemble=2)


def test_forward_start_and_ddim_tail_run():
    pipe = tiny_pipeline(tau=20, tail="ddim", tail_steps=4, start="forward", eta=1.0)
    assert pipe.nfe == 5
    assert torch.isfinite(pipe(torch.rand(1, 3, 8, 8))).all()


def test_bf16_autocast_stays_close_to_fp32():
    y = torch.rand(1, 3, 8, 8)
    ref = tiny_pipeline(tau=2)
    low = tiny_pipeline(tau=2, dtype="bf16")
    low.load_state_dict(ref.state_dict())
    assert (low(y) - ref(y)).abs().max() < 0.05


def test_a_margin_hides_the_image_border_from_zero_padded_convolutions():
    """Two zero-padded 3×3 convolutions (biases on) turn a flat image into one with a different border; with the
    image mirrored by a margin of 2 or more the output is flat again, the input's size, in the input's layout.
    A margin larger than the image is cut to its side − 1."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 3, padding=1))
    flat = torch.full((2, 3, 9, 12), 0.7)
    with torch.no_grad():
        plain, mirrored = run_network(net, flat), run_network(net, flat, margin=2)
        assert (plain - plain[..., 4:5, 6:7]).abs().amax() > 1e-3
        torch.testing.assert_close(mirrored, plain[..., 4:5, 6:7].expand_as(plain), atol=1e-6, rtol=0)
        cl = run_network(net.to(memory_format=torch.channels_last), flat.contiguous(memory_format=torch.channels_last),
                         margin=8)
        assert cl.shape == flat.shape and cl.is_contiguous(memory_format=torch.channels_last)
        assert run_network(net, torch.rand(1, 3, 2, 3), margin=8).shape == (1, 3, 2, 3)


def test_the_denoiser_layout_setting_changes_the_layout_not_the_result():
    """channels_last=False (the NCHW baseline) keeps the denoiser's weights NCHW and gives the NHWC default's
    image; switching back converts them again."""
    y = torch.rand(1, 3, 8, 8)
    pipe = tiny_pipeline(tau=2)
    nhwc = pipe(y)
    conv = next(m for m in pipe.denoiser.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    nchw = pipe.configure(channels_last=False)(y)
    assert conv.weight.is_contiguous()
    torch.testing.assert_close(nchw, nhwc, atol=1e-5, rtol=0)
    pipe.configure(channels_last=True)(y)
    assert not conv.weight.is_contiguous()


def test_the_restored_image_returns_to_the_inputs_device_and_a_user_ir_net_works():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    pipe = tiny_pipeline(tau=2)
    pipe = DPIR(Identity(), pipe.denoiser, pipe.fusion, tau=2)
    assert pipe.scale == 1 and pipe.in_channels == 3
    assert pipe(torch.rand(1, 3, 8, 8)).device.type == "cpu"
