"""The pipeline on tiles, lists of images and memory plans: tiled runs against untiled ones and the reference.

Stand-in networks with a known receptive field make "away from tile borders" exact: 3×3 convolutions (radius
1 each) for the IR net, the denoiser and the fusion, so after the IR net and τ steps an output pixel depends on
input pixels within R = r_IR + τ·(r_den + r_fusion) of it. MIRNet pools over the whole image (channel attention,
SKFF), so a tiled MIRNet run is only close to the untiled one, never equal: these tests need local networks.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpir_fast import DPIR, _backend, tiling
from dpir_fast.pipeline import run_network
from dpir_fast.reference import dpir_sample_ref

TAU = 3


class LocalIR(nn.Module):
    """conv3×3 on the input grid, then pixel shuffle ×scale: radius 1 input pixel (≤ 2·scale output pixels)."""

    size_multiple = 1

    def __init__(self, scale: int = 1, kernel: int = 3):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(3, 3 * scale * scale, kernel, padding=kernel // 2)

    def forward(self, y):
        return F.pixel_shuffle(self.conv(y), self.scale).sigmoid()


class LocalDenoiser(nn.Module):
    size_multiple = 4

    def __init__(self, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, kernel, padding=kernel // 2)

    def forward(self, x):
        return x[:, :3] * 0.8 + 0.2 * self.conv(x)


class LocalFusion(nn.Module):
    def __init__(self, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(6, 3, kernel, padding=kernel // 2)

    def forward(self, x_ir, x_den, t):
        w = 1.0 - float(t) / 1000.0 if not torch.is_tensor(t) else 1.0 - t.float().view(-1, 1, 1, 1) / 1000.0
        return w * x_ir + (1 - w) * x_den + 0.1 * self.conv(torch.cat([x_ir, x_den], 1))


def local_pipeline(scale: int = 1, kernel: int = 3, **settings) -> DPIR:
    """float32 unless ``dtype`` says otherwise: the tiling checks compare with float32 maths."""
    torch.manual_seed(0)
    return DPIR(LocalIR(scale, kernel), LocalDenoiser(kernel), LocalFusion(kernel), tau=TAU,
                **{"dtype": "fp32", **settings})


def radius(scale: int, kernel: int = 3) -> int:
    r = kernel // 2
    return 2 * scale * r + TAU * 2 * r   # IR (input pixel → scale output pixels, rounded up) + τ·(denoiser + fusion)


def tile_estimate(pipe: DPIR, y: torch.Tensor, plan, k: int, seed: int) -> torch.Tensor:
    """Tile k run alone by the reference sampler, its noise placed in the image: a reference-equal estimate."""
    (y0, x0), (th, tw) = plan.origins[k], plan.tile
    x_ir = pipe.restore_ir(y[..., y0:y0 + th, x0:x0 + tw])
    with torch.no_grad():
        return dpir_sample_ref(x_ir, lambda inp: run_network(pipe.denoiser, inp), pipe.fusion, pipe.schedule, TAU,
                               [seed], full_size=plan.out_size, origin=plan.out_origins[k]).clamp(0, 1)


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_tiled_equals_untiled_away_from_borders_and_is_bounded_at_them(scale, backend):
    """Away from tile borders (≥ R from every interior tile edge) the tiled output equals the untiled one to float
    rounding. Everywhere, a pixel is a convex combination (raised-cosine weights) of the tiles covering it, so
    |tiled − untiled| ≤ max over those tiles of |estimate_k − untiled|, each estimate_k the reference on tile k."""
    pipe = local_pipeline(scale, backend=backend)
    y = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(1))
    untiled = pipe(y, seed=7)
    pipe.configure(tile=24 * scale, tile_overlap=8 * scale)
    plan = pipe.plan(40, 52)
    assert plan.n_tiles == 6 and plan.tile == (24, 24)
    tiled = pipe(y, seed=7)
    r = radius(scale)
    error = (tiled - untiled).abs().amax(1)[0]
    bound = torch.zeros_like(error)
    interior = torch.ones_like(error, dtype=torch.bool)
    for k, ((oy, ox), (th, tw)) in enumerate(zip(plan.out_origins, [plan.out_tile] * plan.n_tiles)):
        est = tile_estimate(pipe, y, plan, k, 7)
        region = bound[oy:oy + th, ox:ox + tw]
        torch.maximum(region, (est - untiled[..., oy:oy + th, ox:ox + tw]).abs().amax(1)[0], out=region)
        near = torch.zeros(th, tw, dtype=torch.bool)   # within R of an edge of this tile inside the image
        if oy > 0:
            near[:r] = True
        if ox > 0:
            near[:, :r] = True
        if oy + th < plan.out_size[0]:
            near[-r:] = True
        if ox + tw < plan.out_size[1]:
            near[:, -r:] = True
        interior[oy:oy + th, ox:ox + tw] &= ~near
    assert interior.sum() > 0.3 * interior.numel() and (~interior).any()
    assert error[interior].max() < 1e-5
    assert (error <= bound + 1e-5).all()
    assert error[~interior].max() > 1e-4   # the borders do differ: the bound is not vacuous


def test_noise_per_global_pixel_makes_tile_size_irrelevant():
    """Pointwise networks (1×1 convolutions): every tile's estimate is the untiled value, so any tiling gives the
    untiled output, which it only can if each tile draws its image's noise at each global pixel."""
    pipe = local_pipeline(2, kernel=1)
    y = torch.rand(2, 3, 28, 36, generator=torch.Generator().manual_seed(2))
    untiled = pipe(y, seed=[3, 9])
    for tile, overlap in [(16, 8), (40, 16), ((24, 56), 8)]:
        pipe.configure(tile=tile, tile_overlap=overlap)
        assert pipe.plan(28, 36).n_tiles > 1
        torch.testing.assert_close(pipe(y, seed=[3, 9]), untiled, rtol=0, atol=2e-6)


def test_a_list_of_mixed_sizes_gives_each_image_its_own_result():
    pipe = local_pipeline(2, batch_size=3)
    images = [torch.rand(3, 12, 16), torch.rand(1, 3, 20, 8), torch.rand(3, 12, 16), torch.rand(3, 9, 13)]
    outs = pipe(images, seed=5)
    assert [tuple(o.shape) for o in outs] == [(3, 24, 32), (1, 3, 40, 16), (3, 24, 32), (3, 18, 26)]
    for i, (img, out) in enumerate(zip(images, outs)):
        alone = pipe(img if img.dim() == 4 else img[None], seed=5 + i)
        torch.testing.assert_close(out.reshape(alone.shape), alone, rtol=0, atol=1e-6)
    # a tensor batch is the list of its images
    batch = torch.stack([images[0], images[2]])
    torch.testing.assert_close(pipe(batch, seed=[5, 7]), torch.stack([outs[0], outs[2]]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="image 1 of the list takes a 4-D tensor"):
        pipe([torch.rand(3, 8, 8), torch.rand(8, 8)])
    with pytest.raises(ValueError, match="empty list"):
        pipe([])


def test_automatic_tiles_follow_free_memory_and_max_pixels(monkeypatch):
    pipe = local_pipeline(2)
    assert pipe.plan(300, 400).n_tiles == 1   # plenty of memory: one tile
    per_pixel = pipe.bytes_per_pixel()
    assert 16 < per_pixel < 64 * 1024
    monkeypatch.setattr(tiling, "free_memory", lambda device: 2 * 1024 ** 3)
    plan = pipe.plan(3000, 2000)   # 6000 x 4000 output, planned without allocating it
    assert plan.n_tiles > 1 and plan.bytes_estimate <= 2 * 1024 ** 3
    assert plan.out_size == (6000, 4000)
    pipe.configure(max_pixels=256 * 256)
    plan = pipe.plan(300, 400)
    assert plan.n_tiles > 1 and plan.out_tile[0] * plan.out_tile[1] <= 256 * 256
    with pytest.raises(ValueError, match="below the smallest tile"):
        pipe.configure(max_pixels=64 * 64).plan(300, 400)   # the default overlap of 64 needs 132 x 132
    y = torch.rand(1, 3, 60, 70)
    pipe.configure(max_pixels=None)
    untiled = pipe(y)
    pipe.configure(max_pixels=64 * 64, tile_overlap=16)
    assert pipe.plan(60, 70).n_tiles > 1
    assert (pipe(y) - untiled).abs().max() < 0.05   # blended local estimates stay close
    monkeypatch.setattr(tiling, "free_memory", lambda device: 1000)
    with pytest.raises(MemoryError, match="smaller batch"):
        pipe(y)


def test_nan_checks_name_the_stage_and_suggest_a_dtype():
    pipe = local_pipeline()
    with torch.no_grad():
        pipe.ir.conv.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"the IR network \(LocalIR\) produced NaN/inf values in fp32; "
                                                 "check the input and the checkpoint"):
        pipe(torch.rand(1, 3, 8, 8))
    pipe = local_pipeline(dtype="bf16")
    with torch.no_grad():
        pipe.fusion.conv.bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"the sampler \(denoiser \+ fusion\) .* in bf16; run with "
                                                 "dtype='fp32'"):
        pipe(torch.rand(1, 3, 8, 8))


def test_precision_default_compile_option_and_settings(monkeypatch):
    pipe = local_pipeline(dtype=None)   # the device's default: bf16 where the CPU computes it natively
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert pipe.dtype_name == ("bf16" if native else "fp32") == _backend.default_precision("cpu")[0]
    assert pipe.configure(dtype="fp32").dtype_name == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert local_pipeline(dtype=None).dtype_name == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert local_pipeline(dtype=None).dtype_name == "bf16"
    compiled = {}   # module → its stand-in's call count: torch.compile replaced by a counting wrapper

    class Counted(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            compiled[module] = 0

        def forward(self, *args):
            compiled[self.module] += 1
            return self.module(*args)

    monkeypatch.setattr(torch, "compile", Counted)
    y = torch.rand(1, 3, 8, 8)
    reference = local_pipeline()(y)
    pipe = local_pipeline(compile="all")
    assert pipe.settings["compile"] == ("ir", "denoiser", "fusion")
    torch.testing.assert_close(pipe(y), reference)
    pipe(y)
    # each compiled once and kept; the IR net runs once per image, the denoiser and fusion once per step
    assert compiled == {pipe.ir: 2, pipe.denoiser: 2 * TAU, pipe.fusion: 2 * TAU}
    compiled.clear()
    pipe = local_pipeline(compile=["fusion", "ir"])
    assert pipe.settings["compile"] == ("ir", "fusion")
    torch.testing.assert_close(pipe(y), reference)
    assert compiled == {pipe.ir: 1, pipe.fusion: TAU}
    compiled.clear()
    torch.testing.assert_close(local_pipeline(compile="denoiser")(y), reference)
    assert list(compiled.values()) == [TAU]
    for bad in ("everything", True, ["ir", "sampler"]):
        with pytest.raises(ValueError, match="compile takes \"all\" or names among"):
            local_pipeline(compile=bad)
    for bad, error in [(dict(tile=0), "tile must be"), (dict(tile="big"), "tile must be"),
                       (dict(batch_size=0), "batch_size must be"), (dict(graphs="maybe"), "graphs must be"),
                       (dict(max_pixels=-1), "max_pixels must be"), (dict(tile_overlap=1.5), "tile_overlap")]:
        with pytest.raises(ValueError, match=error):
            pipe.configure(**bad)
    with pytest.raises(TypeError, match="unknown settings \\['tiles'\\]"):
        pipe.configure(tiles=4)
