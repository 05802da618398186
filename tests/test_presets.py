"""The deblur (FFTformer) and burst (BSRT) presets end to end: NFE 6, backends, sRGB conversion, files, CLI."""
import numpy as np
import pytest
import torch

from dpir_fast import DPIR, _backend, cli, save_checkpoint
from dpir_fast.data import ImageInfo, linear_to_srgb, read_image, write_image

from .helpers import tiny_bsrt, tiny_denoiser_fusion, tiny_fftformer

FAST_MISSING = _backend.unavailable_reason("triton", "cpu")


def _pipeline(task):
    torch.manual_seed(0)
    ir = tiny_fftformer() if task == "deblur" else tiny_bsrt()
    return DPIR.preset(task, ir, *tiny_denoiser_fusion(), backend="reference", dtype="fp32")


def _count_calls(pipe):
    calls = {"ir": 0, "denoiser": 0}
    for name in calls:
        getattr(pipe, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


@pytest.fixture(scope="module")
def deblur():
    return _pipeline("deblur")


@pytest.fixture(scope="module")
def burst():
    pytest.importorskip("torchvision")   # BSRT's deformable convolution
    return _pipeline("burst")


def _run_backends(pipe, y):
    """Reference and (where Triton runs, on CPU through its interpreter) fast outputs; NFE 6 each."""
    backends = ["reference"] + ([] if FAST_MISSING else ["fast"])
    calls = _count_calls(pipe)
    outs = [pipe.configure(backend=b)(y, seed=3) for b in backends]
    pipe.configure(backend="reference")
    assert pipe.nfe == 6 and calls == {"ir": len(backends), "denoiser": 5 * len(backends)}
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-4)
    return outs[0]


def test_deblur_preset_end_to_end(deblur):
    y = torch.rand(1, 3, 20, 18, generator=torch.Generator().manual_seed(1))  # reflect-padded to 32
    assert (deblur.tau, deblur.scale, deblur.in_channels, deblur.burst_frames) == (5, 1, 3, None)
    out = _run_backends(deblur, y)
    assert out.shape == y.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(deblur(y, seed=3), deblur(y, seed=3)) and not torch.equal(deblur(y, seed=4), out)


def test_burst_preset_end_to_end(burst):
    y = torch.rand(1, 2, 4, 5, 6, generator=torch.Generator().manual_seed(2))  # [B, N, 4, h, w] packed RGGB
    assert (burst.tau, burst.scale, burst.in_channels, burst.burst_frames) == (5, 8, 4, 2)
    out = _run_backends(burst, y)
    assert out.shape == (1, 3, 40, 48) and out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        linear = burst.ir(y)
    torch.testing.assert_close(burst.restore_ir(y), linear_to_srgb(linear))  # sRGB before fusion
    with pytest.raises(ValueError, match=r"bursts \[B, 2, 4, h, w\]"):
        burst(torch.rand(1, 3, 8, 8))


def test_pipelines_save_and_reload(deblur, burst, tmp_path):
    for pipe, y in ((deblur, torch.rand(1, 3, 17, 17)), (burst, torch.rand(1, 2, 4, 5, 5))):
        save_checkpoint(pipe, tmp_path / "pipe.pt")
        again = DPIR.from_checkpoint(tmp_path / "pipe.pt").configure(backend="reference", dtype="fp32")
        assert type(again.ir) is type(pipe.ir) and again.nfe == 6
        torch.testing.assert_close(again(y, seed=1), pipe(y, seed=1))


def test_cli_restores_a_burst_folder(burst, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPIR_FAST_BACKEND", "reference")  # the fast path is the preset tests' business
    save_checkpoint(burst, tmp_path / "burst.pt")
    frames = torch.rand(2, 4, 6, 5, generator=torch.Generator().manual_seed(5))  # 6 x 5: padded to 8
    (tmp_path / "scene").mkdir()
    for i, frame in enumerate(frames):
        np.save(tmp_path / "scene" / f"{i:02d}.npy", frame.numpy())
    args = ["restore", str(tmp_path / "scene"), "-o", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "burst.pt"),
            "--device", "cpu", "--dtype", "fp32", "--quiet"]
    assert cli.main(args + ["--burst"]) == 0
    out, info = read_image(tmp_path / "out" / "scene.png")
    assert out.shape == (1, 3, 48, 40) and info.bits == 16
    torch.testing.assert_close(out, burst(frames[None], seed=0), rtol=0, atol=1 / 65535)
    write_image(tmp_path / "photo.png", torch.rand(1, 3, 4, 4), ImageInfo("PNG", "RGB", 8, False))
    args[1] = str(tmp_path / "photo.png")
    assert cli.main(args) == 2 and "pass --burst" in capsys.readouterr().err  # a burst net needs --burst
