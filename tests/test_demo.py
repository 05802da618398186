"""The shipped demo-sr4x weights: small, packaged, loadable as float32, and `dpir-fast demo` end to end."""
import fnmatch
from pathlib import Path

import pytest
import torch
from PIL import Image

from dpir_fast import DPIR, cli
from dpir_fast.pretrained import HERE, PRETRAINED, SAMPLE_IMAGE, pretrained_path

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
needs_weights = pytest.mark.skipif(not (HERE / PRETRAINED["demo-sr4x"]).is_file(),
                                   reason="demo weights not trained yet (scripts/train_demo.py)")


def test_package_data_ships_weights_sample_and_card():
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["dpir_fast.pretrained"]
    for name in (PRETRAINED["demo-sr4x"], SAMPLE_IMAGE.name, "MODEL_CARD.md"):
        assert any(fnmatch.fnmatch(name, p) for p in shipped), name
    assert (HERE / "MODEL_CARD.md").is_file() and SAMPLE_IMAGE.is_file()


@needs_weights
def test_weights_are_fp16_and_small():
    total = sum(f.stat().st_size for f in HERE.iterdir() if f.is_file())
    assert total <= 20 * 2**20
    record = torch.load(pretrained_path("demo-sr4x"), weights_only=True)
    dtypes = {v.dtype for part in ("ir", "denoiser", "fusion") for v in record[part]["state_dict"].values()
              if v.is_floating_point()}
    assert dtypes == {torch.float16}


@needs_weights
def test_from_pretrained_loads_float32_with_its_shipped_sampler():
    pipe = DPIR.from_pretrained("demo-sr4x")
    assert pipe.nfe == 6 and pipe.tau == 5 and pipe.scale == 4  # MODEL_CARD.md: why not the paper's tau 250
    assert {p.dtype for p in pipe.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="known"):
        DPIR.from_pretrained("sr8x")


@pytest.fixture
def reference_backend(monkeypatch):
    """The demo on plain PyTorch: under TRITON_INTERPRET=1 (CPU tests) "auto" would run the Triton interpreter."""
    monkeypatch.setenv("DPIR_FAST_BACKEND", "reference")


@needs_weights
def test_demo_writes_side_by_side_png(tmp_path, capsys, reference_backend):
    assert cli.main(["demo", "-o", str(tmp_path / "demo.png")]) == 0
    err = capsys.readouterr().err
    assert "PSNR vs ground truth" in err and "NFE 6" in err
    with Image.open(tmp_path / "demo.png") as im:
        assert im.mode == "RGB" and im.size == (4 * 128 + 3 * 4, 128 + 14)


@needs_weights
def test_demo_on_own_image_and_bad_input(tmp_path, capsys, reference_backend):
    Image.new("RGB", (12, 8), (200, 30, 30)).save(tmp_path / "small.png")
    assert cli.main(["demo", "--input", str(tmp_path / "small.png"), "-o", str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (3 * 48 + 2 * 4, 32 + 14)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert cli.main(["demo", "--input", str(tmp_path / "bad.png"), "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
