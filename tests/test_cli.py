"""dpir-fast command line: restore over folders with failures, overwrite rules, info, exit codes."""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpir_fast import cli
from dpir_fast.cli_common import resolve_device

REPO = Path(__file__).resolve().parents[1]


class FakePipe:
    """Stands in for DPIR: nearest ×2 upsampling; records the seeds; fails on demand."""

    scale, in_channels, device = 2, 3, torch.device("cpu")

    def __init__(self, fail=None, nan=False):
        self.seeds, self.fail, self.nan, self.settings, self.batches = [], fail, nan, {}, []

    def configure(self, **settings):
        self.settings.update(settings)
        return self

    def __call__(self, y, seed=0):
        if isinstance(y, list):   # a batch of files: one image per seed, like DPIR
            self.batches.append(len(y))
            return [self(one, s) for one, s in zip(y, seed)]
        self.seeds.append(seed)
        if self.fail is not None:
            raise self.fail
        if self.nan:
            return torch.full_like(y, float("nan"))
        if min(y.shape[-2:]) < 4:
            raise ValueError(f"image of {y.shape[-2]}x{y.shape[-1]} is smaller than the network's 4x4 minimum")
        return torch.nn.functional.interpolate(y, scale_factor=self.scale, mode="nearest")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    pipe = FakePipe()
    monkeypatch.setattr(cli, "_load_pipeline", lambda *args: pipe)
    (tmp_path / "model.pt").write_bytes(b"fake")
    return pipe


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _restore(tmp_path, *args):
    return cli.main(["restore", *map(str, args), "--checkpoint", str(tmp_path / "model.pt"), "--device", "cpu"])


def test_folder_with_good_and_bad_files(fake, tmp_path, capsys):
    src = tmp_path / "in"
    _save(src / "a.png", np.zeros((6, 8, 3), np.uint8))
    _save(src / "b.jpg", np.full((5, 7), 90, np.uint8))
    (src / "c.png").write_bytes(b"\x89PNG not really")
    (src / "notes.txt").write_text("not an image")
    code = _restore(tmp_path, src, "-o", tmp_path / "out", "--seed", "7")
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.jpg"]
    a, b = Image.open(tmp_path / "out/a.png"), Image.open(tmp_path / "out/b.jpg")
    assert (a.size, a.mode, b.size, b.mode) == ((16, 12), "RGB", (14, 10), "L")
    assert "c.png" in err and "notes.txt" in err and "1 failed" in err
    assert fake.seeds == [7, 7]
    assert fake.settings == dict(dtype=None, tile=None, tile_overlap=64, batch_size=4, compile=())


def test_files_go_in_batches_and_a_failing_batch_is_retried_file_by_file(fake, tmp_path, capsys):
    src = tmp_path / "in"
    for name, side in [("a.png", 8), ("b.png", 6), ("c.png", 2), ("d.png", 8)]:
        _save(src / name, np.full((side, side, 3), 50, np.uint8))
    assert _restore(tmp_path, src, "-o", tmp_path / "out", "--batch-size", "3", "--seed", "4") == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png", "d.png"]
    assert fake.batches == [3]   # a, b, c in one call, which fails on c; then each alone; d alone
    err = capsys.readouterr().err
    assert "c.png: image of 2x2 is smaller than the network's 4x4 minimum" in err and "1 failed" in err
    assert set(fake.seeds) == {4}
    assert np.asarray(Image.open(tmp_path / "out" / "b.png")).shape == (12, 12, 3)


def test_engine_options_reach_the_pipeline(fake, tmp_path, capsys):
    src = _save(tmp_path / "a.png", np.zeros((6, 8, 3), np.uint8))
    args = [src, "-o", tmp_path / "out", "--dtype", "bf16", "--tile", "256", "--tile-overlap", "0", "--batch-size", "2",
            "--compile", "fusion, ir"]
    assert _restore(tmp_path, *args) == 0
    assert fake.settings == dict(dtype="bf16", tile=256, tile_overlap=0, batch_size=2, compile=("ir", "fusion"))
    assert _restore(tmp_path, src, "-o", tmp_path / "all", "--compile", "all") == 0
    assert fake.settings["compile"] == ("ir", "denoiser", "fusion")
    assert _restore(tmp_path, src, "-o", tmp_path / "out", "--tile-overlap", "-1") == 2
    assert "must be >= 0" in capsys.readouterr().err
    assert "ir_ensemble" not in fake.settings   # the checkpoint's own unless asked
    assert _restore(tmp_path, src, "-o", tmp_path / "ens", "--ir-ensemble", "4") == 0
    assert fake.settings["ir_ensemble"] == 4
    assert _restore(tmp_path, src, "-o", tmp_path / "ens3", "--ir-ensemble", "3") == 2
    assert "invalid choice: 3" in capsys.readouterr().err


def test_never_overwrites_an_input(fake, tmp_path, capsys):
    src = _save(tmp_path / "a.png", np.zeros((6, 6, 3), np.uint8))
    before = src.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert _restore(tmp_path, src, "-o", tmp_path, *extra) == 2
        assert "would replace the input" in capsys.readouterr().err
    assert src.read_bytes() == before and fake.seeds == []
    other = _save(tmp_path / "b.jpg", np.zeros((6, 6, 3), np.uint8))  # b.jpg -> b.png: no clash, but a.png is
    assert _restore(tmp_path, other, src, "-o", tmp_path, "--format", "png") == 2


def test_existing_outputs_need_overwrite(fake, tmp_path, capsys):
    src = _save(tmp_path / "in/a.png", np.zeros((6, 6, 3), np.uint8))
    (tmp_path / "out").mkdir()
    (tmp_path / "out/a.png").write_bytes(b"old")
    assert _restore(tmp_path, src, "-o", tmp_path / "out") == 0
    assert (tmp_path / "out/a.png").read_bytes() == b"old"
    assert "skipped" in capsys.readouterr().err
    assert _restore(tmp_path, src, "-o", tmp_path / "out", "--overwrite") == 0
    assert Image.open(tmp_path / "out/a.png").size == (12, 12)


def test_name_clashes_are_disambiguated(fake, tmp_path):
    one = _save(tmp_path / "x/a.png", np.zeros((4, 4, 3), np.uint8))
    two = _save(tmp_path / "y/a.png", np.zeros((4, 4, 3), np.uint8))
    three = _save(tmp_path / "y/A.jpg", np.zeros((4, 4, 3), np.uint8))
    assert _restore(tmp_path, one, two, three, "-o", tmp_path / "out", "--format", "png", "--quiet") == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["A_3.png", "a.png", "a_2.png"]


@pytest.mark.parametrize("pipe, expect", [
    (FakePipe(), "smaller than the network"),
    (FakePipe(fail=torch.OutOfMemoryError("CUDA out of memory")), "out of memory"),
    (FakePipe(fail=RuntimeError("DefaultCPUAllocator: can't allocate: out of memory")), "--tile 512"),
    (FakePipe(nan=True), "NaN"),
])
def test_per_file_errors_are_reported(monkeypatch, tmp_path, capsys, pipe, expect):
    (tmp_path / "model.pt").write_bytes(b"fake")
    monkeypatch.setattr(cli, "_load_pipeline", lambda *args: pipe)
    _save(tmp_path / "in/tiny.png", np.zeros((2, 2, 3), np.uint8))
    assert _restore(tmp_path, tmp_path / "in", "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "tiny.png" in err and expect in err and "Traceback" not in err
    assert not (tmp_path / "out/tiny.png").exists()


def test_usage_errors_exit_2(fake, tmp_path, capsys):
    _save(tmp_path / "in/a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    cases = [
        (["restore", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "no.pt")],
         "neither a file nor a shipped pipeline"),
        (["restore", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "model.pt")],
         "no input images"),
        (["restore", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--checkpoint", "x"], "no such file"),
        (["restore", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--checkpoint", "x", "--device", "gpu"],
         "use auto, cpu"),
        (["restore", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--checkpoint", "x", "--compile", "ir,unet"],
         "compile takes \"all\" or names among"),
        (["restore", str(tmp_path / "in")], "required"),
        ([], "COMMAND"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_bad_checkpoint_file_exits_2(tmp_path, capsys):
    _save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "model.pt").write_bytes(os.urandom(64))
    assert _restore(tmp_path, tmp_path / "a.png", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "cannot load" in err and "model.pt" in err and "Traceback" not in err


def test_progress_tty_and_lines():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, enabled, expect in ((Tty(), True, "\r[##########----------] 1/2 a.png"),
                                    (io.StringIO(), True, "[1/2] a.png: ok\n"), (io.StringIO(), False, "")):
        bar = cli.Progress(2, stream, enabled)
        bar.start("a.png")
        bar.step("a.png", "ok")
        bar.message("error: b.png: broken")
        bar.close()
        text = stream.getvalue()
        assert expect in text and "error: b.png: broken\n" in text


def test_info_prints_versions(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out and "Pillow" in out
    assert "_C         " in out and "backend    ext (dau_tail, skff) on cpu: " in out and "backend    triton" in out


def test_module_entry_point_info():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "dpir_fast.cli", "info"], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert torch.__version__ in result.stdout


def test_restore_end_to_end_with_a_real_tiny_checkpoint(tmp_path, capsys):
    from dpir_fast import DPIR, save_checkpoint
    from dpir_fast.models import FusionNet, MIRNet, SwinIR

    torch.manual_seed(0)
    ir = SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=2,
                upsampler="pixelshuffledirect")
    den = MIRNet(in_channels=4, out_channels=3, n_feat=8, n_rrg=1, n_msrb=1)
    save_checkpoint(DPIR(ir, den, FusionNet(n_feat=8, growth=4), tau=3), tmp_path / "model.pt")
    rgb = _save(tmp_path / "in/rgb.png", np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8))
    la = _save(tmp_path / "in/gray.png", np.random.default_rng(1).integers(0, 256, (9, 10, 2), dtype=np.uint8))
    assert _restore(tmp_path, rgb, la, "-o", tmp_path / "out", "--seed", "3", "--tau", "2") == 0
    a, b = Image.open(tmp_path / "out/rgb.png"), Image.open(tmp_path / "out/gray.png")
    assert (a.size, a.mode, b.size, b.mode) == ((34, 24), "RGB", (20, 18), "LA")
    assert _restore(tmp_path, la, "-o", tmp_path / "alone", "--seed", "3", "--tau", "2", "--quiet") == 0
    assert (tmp_path / "alone/gray.png").read_bytes() == (tmp_path / "out/gray.png").read_bytes()
    assert capsys.readouterr().err.count("written") == 1  # --quiet prints no summary


def test_each_torchrun_process_makes_its_gpu_the_current_device(monkeypatch):
    """Under torchrun, process LOCAL_RANK runs on (and sets as current) GPU LOCAL_RANK mod the GPU count."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == "cuda:1" and chosen == ["cuda:1"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cpu") == "cpu" and chosen == ["cuda:1"]
