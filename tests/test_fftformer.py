"""FFTformer: official key layout, parameter count, size handling, determinism, float32 FFTs under autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from dpir_fast.checkpoints import load_checkpoint
from dpir_fast.models import FFTformer, fftformer_gopro

from .helpers import tiny_fftformer


def official_shapes(inp=3, out=3, dim=8, num_blocks=(1, 1, 1), num_refinement_blocks=1, ffn=3):
    """Key -> shape of the official fftformer state dict (bias=False), written from its structure."""
    shapes = {}

    def ln(p, d):
        shapes.update({f"{p}.body.weight": (d,), f"{p}.body.bias": (d,)})

    def block(p, d, factor, att):
        h = int(d * factor)
        if att:
            ln(f"{p}.norm1", d)
            shapes.update({f"{p}.attn.to_hidden.weight": (6 * d, d, 1, 1), f"{p}.attn.to_hidden_dw.weight":
                           (6 * d, 1, 3, 3), f"{p}.attn.project_out.weight": (d, 2 * d, 1, 1)})
            ln(f"{p}.attn.norm", 2 * d)
        ln(f"{p}.norm2", d)
        shapes.update({f"{p}.ffn.project_in.weight": (2 * h, d, 1, 1), f"{p}.ffn.dwconv.weight": (2 * h, 1, 3, 3),
                       f"{p}.ffn.fft": (2 * h, 1, 1, 8, 5), f"{p}.ffn.project_out.weight": (d, h, 1, 1)})

    def stage(name, d, n, att):
        for i in range(n):
            block(f"{name}.{i}", d, ffn, att)

    def fuse(p, d):
        shapes.update({f"{p}.conv.weight": (2 * d, 2 * d, 1, 1), f"{p}.conv.bias": (2 * d,),
                       f"{p}.conv2.weight": (2 * d, 2 * d, 1, 1), f"{p}.conv2.bias": (2 * d,)})
        block(f"{p}.att_channel", 2 * d, 2.66, False)

    n1, n2, n3 = num_blocks[:3]
    shapes["patch_embed.proj.weight"] = (dim, inp, 3, 3)
    stage("encoder_level1", dim, n1, False)
    shapes["down1_2.body.1.weight"] = (2 * dim, dim, 3, 3)
    stage("encoder_level2", 2 * dim, n2, False)
    shapes["down2_3.body.1.weight"] = (4 * dim, 2 * dim, 3, 3)
    stage("encoder_level3", 4 * dim, n3, False)
    stage("decoder_level3", 4 * dim, n3, True)
    shapes["up3_2.body.1.weight"] = (2 * dim, 4 * dim, 3, 3)
    shapes["reduce_chan_level2.weight"] = (2 * dim, 4 * dim, 1, 1)
    stage("decoder_level2", 2 * dim, n2, True)
    shapes["up2_1.body.1.weight"] = (dim, 2 * dim, 3, 3)
    stage("decoder_level1", dim, n1, True)
    stage("refinement", dim, num_refinement_blocks, True)
    fuse("fuse2", 2 * dim)
    fuse("fuse1", dim)
    shapes["output.weight"] = (out, dim, 3, 3)
    return shapes


def official_state(seed=0, **cfg):
    g = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(s, generator=g) + (1.0 if k.endswith(("fft", "body.weight")) else 0.0)
            for k, s in official_shapes(**cfg).items()}


def test_official_layout_loads_strictly_and_runs_deterministically(tmp_path):
    state = official_state()
    torch.save(state, tmp_path / "net_g_GoPro.pth")  # official files are raw state dicts
    model = load_checkpoint(tiny_fftformer(), tmp_path / "net_g_GoPro.pth").eval()
    tiny_fftformer().load_state_dict(state, strict=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_shapes()
    x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == x.shape and torch.equal(a, b) and torch.isfinite(a).all()


def test_gopro_config_counts_and_keys():
    with torch.device("meta"):
        model, default = fftformer_gopro(), FFTformer()
    assert sum(p.numel() for p in model.parameters()) == 16_560_474
    shapes = official_shapes(dim=48, num_blocks=(6, 6, 12), num_refinement_blocks=4)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert sum(math.prod(s) for s in shapes.values()) == 16_560_474
    for key in ("decoder_level3.11.attn.norm.body.bias", "encoder_level3.11.ffn.fft", "refinement.3.norm1.body.weight",
                "fuse2.att_channel.ffn.project_in.weight", "down2_3.body.1.weight", "reduce_chan_level2.weight"):
        assert key in shapes
    # the official default lists a 4th, unused block count: the same network
    assert sum(p.numel() for p in default.parameters()) == 16_560_474


def test_any_size_is_reflect_padded_to_32_and_cropped():
    torch.manual_seed(0)
    model = tiny_fftformer().eval()
    model.load_state_dict(official_state(seed=3))
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        out = model(x)
        manual = model(F.pad(x, (0, 64 - 45, 0, 64 - 37), mode="reflect"))[:, :, :37, :45]  # official test script
    assert out.shape == x.shape
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="FFTformer expects"):
        model(torch.rand(1, 4, 32, 32))


def test_ffts_stay_float32_under_bf16_autocast(monkeypatch):
    seen = []
    for name in ("rfft2", "irfft2"):
        original = getattr(torch.fft, name)

        def spy(x, *args, _f=original, _name=name, **kwargs):
            out = _f(x, *args, **kwargs)
            seen.append((_name, x.dtype, out.dtype))
            return out

        monkeypatch.setattr(torch.fft, name, spy)
    model = tiny_fftformer().eval()
    model.load_state_dict(official_state(seed=4))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    # per block: DFFN 1 rfft2 + 1 irfft2; FSAS 2 rfft2 + 1 irfft2 (5 DFFN-only blocks, 4 with FSAS)
    assert len(seen) == 5 * 2 + 4 * 5
    assert {(n, i, o) for n, i, o in seen} == {("rfft2", torch.float32, torch.complex64),
                                               ("irfft2", torch.complex64, torch.float32)}
    with torch.no_grad():
        ref = model(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 elsewhere: close, not equal
