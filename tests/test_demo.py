"""The shipped demo weights: small, packaged, loadable as float32, no artefacts on flat images, and `dpir-fast
demo` end to end."""
import fnmatch
from pathlib import Path

import pytest
import torch
from PIL import Image

from dpir_fast import DPIR, cli
from dpir_fast.pretrained import HERE, PRETRAINED, SAMPLE_IMAGE, pretrained_path

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
needs_weights = pytest.mark.skipif(not all((HERE / file).is_file() for file in PRETRAINED.values()),
                                   reason="demo weights not trained yet (scripts/train_demo.py)")
SCALES = {"demo-sr4x": 4, "demo-deblur": 1}


def test_package_data_ships_weights_sample_and_card():
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["dpir_fast.pretrained"]
    for name in (*PRETRAINED.values(), SAMPLE_IMAGE.name, "MODEL_CARD.md"):
        assert any(fnmatch.fnmatch(name, p) for p in shipped), name
    assert (HERE / "MODEL_CARD.md").is_file() and SAMPLE_IMAGE.is_file()


@needs_weights
def test_weights_are_fp16_and_small():
    total = sum(f.stat().st_size for f in HERE.iterdir() if f.is_file())
    assert total <= 20 * 2**20
    for name in PRETRAINED:
        record = torch.load(pretrained_path(name), weights_only=True)
        dtypes = {v.dtype for part in ("ir", "denoiser", "fusion") for v in record[part]["state_dict"].values()
                  if v.is_floating_point()}
        assert dtypes == {torch.float16}, name


@needs_weights
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_from_pretrained_loads_float32_with_its_shipped_sampler(name):
    pipe = DPIR.from_pretrained(name)
    # τ and the IR self-ensemble were chosen on the validation split, τ within the range the fusion net was
    # trained on (MODEL_CARD.md)
    ensemble = pipe.settings["ir_ensemble"]
    assert 1 <= pipe.tau <= 25 and pipe.nfe == ensemble + pipe.tau and pipe.scale == SCALES[name]
    assert ensemble == 8
    assert {p.dtype for p in pipe.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="known"):
        DPIR.from_pretrained("sr8x")
    assert DPIR.from_checkpoint(name).tau == pipe.tau


def flat_images():
    """(seed, [1, 3, 19, 26] images of one colour per channel): greys and saturated colours, 0 and 1 included."""
    for seed, level in enumerate((0.0, 0.2, 0.5, 0.83, 1.0)):
        y = torch.full((1, 3, 19, 26), level)
        y[:, 1] = 1.0 - level   # a flat colour, not only grey
        yield seed, y


@needs_weights
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_ir_nets_keep_a_flat_image_flat(name):
    """Every pixel, borders and corners included, equals the input's colour (CompactSR: exactly, by design)."""
    pipe = DPIR.from_pretrained(name)
    for _, y in flat_images():
        expected = torch.nn.functional.interpolate(y, scale_factor=pipe.scale)
        assert (pipe.restore_ir(y).clamp(0, 1) - expected).abs().max() <= 1e-5


@needs_weights
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_pipelines_keep_a_flat_image_flat(name, reference_backend):
    """The whole DP-IR output within 1/255 of the flat input at every pixel, borders and corners included (the
    denoiser's zero padding left 1.3/255 at the borders before its input was mirrored: DENOISER_MARGIN)."""
    pipe = DPIR.from_pretrained(name)
    for seed, y in flat_images():
        expected = torch.nn.functional.interpolate(y, scale_factor=pipe.scale)
        out = pipe(y, seed=seed)
        assert (out - expected).abs().max() <= 1 / 255, (y[0, :, 0, 0].tolist(), (out - expected).abs().max())


@needs_weights
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_pipelines_treat_flat_borders_like_the_inside(name, reference_backend):
    """No border artefact: over the outermost 2 pixels DP-IR moves a flat colour at most 0.75/255 more than it
    does inside (the zero-padded fusion: 7.9/255 at the borders, 0.82/255 inside)."""
    pipe = DPIR.from_pretrained(name)
    for seed, y in flat_images():
        dev = (pipe(y, seed=seed) - torch.nn.functional.interpolate(y, scale_factor=pipe.scale)).abs()[0].amax(0)
        inside = dev[2:-2, 2:-2].max()
        border = torch.cat([dev[:2].flatten(), dev[-2:].flatten(), dev[:, :2].flatten(), dev[:, -2:].flatten()])
        assert border.max() <= inside + 0.75 / 255, (y[0, :, 0, 0].tolist(), border.max() * 255, inside * 255)


@pytest.fixture
def reference_backend(monkeypatch):
    """The demo on plain PyTorch: under TRITON_INTERPRET=1 (CPU tests) "auto" would run the Triton interpreter."""
    monkeypatch.setenv("DPIR_FAST_BACKEND", "reference")


@needs_weights
def test_demo_writes_side_by_side_png_into_a_file_or_folder(tmp_path, capsys, reference_backend):
    assert cli.main(["demo", "-o", str(tmp_path / "demo.png")]) == 0
    err = capsys.readouterr().err
    assert "PSNR vs ground truth: bicubic" in err and "gain over bicubic: IR net +" in err
    with Image.open(tmp_path / "demo.png") as im:   # input | bicubic | IR net | DP-IR | ground truth
        assert im.mode == "RGB" and im.size == (5 * 128 + 4 * 4, 128 + 14)
    assert cli.main(["demo", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "demo.png").is_file()
    assert cli.main(["demo", "-o", str(tmp_path / "new") + "/"]) == 0
    assert (tmp_path / "new" / "demo.png").is_file()


@needs_weights
def test_demo_on_own_photo_own_low_resolution_image_and_bad_input(tmp_path, capsys, reference_backend):
    Image.new("RGB", (12, 8), (200, 30, 30)).save(tmp_path / "small.png")
    assert cli.main(["demo", "--input", str(tmp_path / "small.png"), "-o", str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as im:   # no ground truth: 4 panels
        assert im.size == (4 * 48 + 3 * 4, 32 + 14)
    rng = torch.Generator().manual_seed(0)
    photo = (torch.rand(3, 42, 38, generator=rng) * 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert cli.main(["demo", "--photo", str(tmp_path / "photo.png"), "-o", str(tmp_path / "p.png")]) == 0
    assert "photo.png: 36x40 reduced x4 (MATLAB bicubic) to 9x10" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert cli.main(["demo", "--input", str(tmp_path / "bad.png"), "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


@needs_weights
def test_restore_takes_a_shipped_pipeline_by_name(tmp_path, capsys, reference_backend):
    Image.new("RGB", (10, 9), (20, 120, 230)).save(tmp_path / "in.png")
    for name, scale in SCALES.items():
        assert cli.main(["restore", str(tmp_path / "in.png"), "-o", str(tmp_path / name), "--checkpoint", name,
                         "--quiet"]) == 0
        with Image.open(tmp_path / name / "in.png") as im:
            assert im.size == (10 * scale, 9 * scale)
    assert cli.main(["restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "o2"), "--checkpoint",
                     "demo-sr8x"]) == 2
    assert "neither a file nor a shipped pipeline (shipped: demo-deblur, demo-sr4x)" in capsys.readouterr().err


def test_deblur_demo_panels_and_scores_with_stand_in_weights(tmp_path, monkeypatch, capsys, reference_backend):
    """task="deblur": the sample blurred by the demo's shake (not a training kernel), restored by the pipeline
    demo-deblur names (here a tiny untrained one), blurred | IR net | DP-IR | ground truth, gains over blurred.
    `dpir-fast demo --task` offers only the tasks whose weights are in the package."""
    from dpir_fast.models import CompactUNet, FusionNet, MIRNet
    from dpir_fast.pretrained import demo

    torch.manual_seed(0)
    tiny = DPIR(CompactUNet(n_feat=4, mults=(1, 2)), MIRNet(in_channels=4, out_channels=3, n_feat=8, n_rrg=1,
                                                           n_msrb=1), FusionNet(n_feat=4, growth=2), tau=2)
    asked = []
    monkeypatch.setattr(DPIR, "from_pretrained", classmethod(lambda cls, name, device=None: asked.append(name) or tiny))
    log = []
    demo.run_demo(tmp_path, task="deblur", log=log.append)
    err = "\n".join(log)
    assert asked == ["demo-deblur"] and "128x128 blurred by a 15-px curved camera shake" in err
    assert "PSNR vs ground truth: blurred" in err and "gain over blurred: IR net" in err
    assert "ground truth 200" not in err   # scored: the estimates, not the ground truth's own panel
    with Image.open(tmp_path / "demo.png") as im:   # blurred | IR net | DP-IR | ground truth
        assert im.size == (4 * 128 + 3 * 4, 128 + 14)
    shipped = [t for t in demo.TASKS if demo.TASKS[t]["weights"] in PRETRAINED]
    assert cli.main(["demo", "--task", "none", "-o", str(tmp_path)]) == 2
    assert f"choose from {', '.join(repr(t) for t in sorted(shipped))}" in capsys.readouterr().err
    sharp = torch.rand(1, 3, 40, 48)
    blurred = demo.degrade("deblur", sharp, seed=3)
    assert blurred.shape == sharp.shape and torch.equal(blurred, demo.degrade("deblur", sharp, seed=3))
    assert (blurred - sharp).abs().mean() > 0.05 and not torch.equal(blurred, demo.degrade("deblur", sharp, seed=4))


@needs_weights
def test_deblur_demo_restores_the_blurred_sample(tmp_path, capsys, reference_backend):
    """The shipped demo-deblur sharpens the sample under the demo's shake (a kernel it was not trained on)."""
    assert cli.main(["demo", "--task", "deblur", "-o", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "gain over blurred: IR net +" in err and ", DP-IR +" in err, err
    with Image.open(tmp_path / "demo.png") as im:   # blurred | IR net | DP-IR | ground truth
        assert im.size == (4 * 128 + 3 * 4, 128 + 14)
