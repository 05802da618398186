"""Tiny CPU training runs: the loss falls, resuming is exact, 2-process DDP keeps ranks identical, the CLI works."""
import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from dpir_fast import DPIR, cli, save_checkpoint
from dpir_fast.data.datasets import ImageFolder
from dpir_fast.models import FusionNet, MIRNet
from dpir_fast.train import DenoiserTask, FusionTask, Processes, TrainConfig, TrainError, fit, ir_pair, read_state
from dpir_fast.reference.sampler import denoiser_input_ref
from dpir_fast.train.common import PSNR_LOSS_FLOOR, StepRandom
from dpir_fast.train.fusion import LOSSES
from tests.helpers import tiny_swinir

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four smooth 48×48 colour images (sums of random sinusoids)."""
    root = tmp_path_factory.mktemp("photos")
    yy, xx = np.mgrid[0:48, 0:48] / 48
    rng = np.random.default_rng(0)
    for i in range(4):
        img = sum(np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy) + rng.uniform(0, 6))[..., None]
                  * rng.uniform(0, 1, 3) for _ in range(3))
        img = (img - img.min()) / (img.max() - img.min())
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def _tiny_mirnet() -> MIRNet:
    torch.manual_seed(0)
    return MIRNet(in_channels=4, out_channels=3, n_feat=8, n_rrg=1, n_msrb=1)


def _config(out, steps, **kw) -> TrainConfig:
    base = dict(out=out, steps=steps, batch=4, lr=2e-3, lr_decay=0.5, lr_every=3, workers=0, quiet=True,
                ckpt_every=2, val_every=100, log_every=1)
    return TrainConfig(**{**base, **kw})


def _denoiser_task(photos, model=None) -> DenoiserTask:
    return DenoiserTask(model or _tiny_mirnet(), ImageFolder(photos, 16), 16)


def _log(out: Path) -> list[dict]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_denoiser_loss_decreases(photos, tmp_path):
    fit(_denoiser_task(photos), _config(tmp_path, 40, lr_every=1000), Processes())
    losses = [float(r["loss"]) for r in _log(tmp_path)]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    state = read_state(tmp_path / "last.pt")
    assert state["step"] == 40 and set(state["rng"]) == {"torch", "python", "numpy", "cuda"}
    assert state["scheduler"]["last_epoch"] == 40 and state["optimizer"]["state"]


def test_denoiser_eps_loss_weighs_every_noise_level_alike(photos):
    """A "denoiser" that returns its noisy input is off by σ·ε: the x0 loss is mean(σ²ε²), the eps loss
    mean(ε²), whatever the σ drawn in [sigma_min, sigma_max]."""
    class Noisy(nn.Module):
        def forward(self, inp):
            return inp[:, :3]

    x0 = torch.rand(4, 3, 16, 16)
    draws = StepRandom(0, 5, Processes(), 4)
    sigma = 0.01 + draws.rand() * 0.09
    eps = draws.randn(3, 16, 16)
    losses = {}
    for kind in ("x0", "eps"):
        task = DenoiserTask(_tiny_mirnet(), ImageFolder(photos, 16), 16, sigma_min=0.01, sigma_max=0.1, loss=kind)
        losses[kind] = task.loss(Noisy(), None, x0, StepRandom(0, 5, Processes(), 4))
    torch.testing.assert_close(losses["x0"], (sigma[:, None, None, None] ** 2 * eps ** 2).mean())
    torch.testing.assert_close(losses["eps"], (eps ** 2).mean())
    for bad in (dict(loss="eps"), dict(loss="l1", sigma_min=0.01), dict(sigma_min=0.2, sigma_max=0.1)):
        with pytest.raises(ValueError):
            DenoiserTask(_tiny_mirnet(), ImageFolder(photos, 16), 16, **bad)


class Nearest(nn.Module):
    """A ×4 'IR net' that repeats pixels and keeps the input it saw."""
    scale = 4

    def forward(self, y):
        self.seen = y
        return y.repeat_interleave(4, -2).repeat_interleave(4, -1)


def test_ir_grain_goes_into_the_target_and_its_degradation(photos):
    """grain > 0: the crop gets x0 + σ·ε (σ ~ U[0, grain], the step's draws), clipped, before the degradation,
    and the loss compares the net's output with that grainy crop."""
    from dpir_fast.data.degrade import bicubic_downsample
    from dpir_fast.train.ir import IRTask

    x0, net = torch.rand(2, 3, 16, 16), Nearest()
    draws = StepRandom(0, 3, Processes(), 2)
    sigma = draws.rand() * 0.1
    grainy = (x0 + sigma[:, None, None, None] * draws.randn(3, 16, 16)).clamp(0, 1)
    task = IRTask("sr4x", net, ImageFolder(photos, 16), 16, grain=0.1)
    loss = task.loss(net, torch.arange(2), x0, StepRandom(0, 3, Processes(), 2))
    torch.testing.assert_close(net.seen, bicubic_downsample(grainy, 4))
    torch.testing.assert_close(loss, (net(net.seen) - grainy).abs().mean())
    assert task.record()["grain"] == 0.1
    with pytest.raises(ValueError, match="grain"):
        IRTask("sr4x", net, ImageFolder(photos, 16), 16, grain=-0.1)


def test_ir_chroma_subsamples_the_colour_of_the_chosen_crops(photos):
    """chroma = p: the crops whose draw is below p get JPEG's 4:2:0 colour before the degradation, in the target
    too; the others stay as they are."""
    from dpir_fast.data.degrade import bicubic_downsample, subsample_chroma
    from dpir_fast.train.ir import IRTask

    x0, net = torch.rand(4, 3, 16, 16), Nearest()
    chosen = StepRandom(0, 2, Processes(), 4).rand() < 0.5
    assert 0 < int(chosen.sum()) < 4   # this step's draws pick some crops, not all
    expected = torch.where(chosen[:, None, None, None], subsample_chroma(x0), x0)
    task = IRTask("sr4x", net, ImageFolder(photos, 16), 16, loss="mse", chroma=0.5)
    loss = task.loss(net, torch.arange(4), x0, StepRandom(0, 2, Processes(), 4))
    torch.testing.assert_close(net.seen, bicubic_downsample(expected, 4))
    torch.testing.assert_close(loss, ((net(net.seen) - expected) ** 2).mean())
    assert not torch.allclose(expected, x0) and task.record()["chroma"] == 0.5
    with pytest.raises(ValueError, match="chroma"):
        IRTask("sr4x", net, ImageFolder(photos, 16), 16, chroma=1.5)


def test_ir_defocus_softens_the_target_and_its_degradation(photos):
    """defocus > 0: each crop is blurred by a Gaussian of σ ~ U[0, defocus] (the step's draws) before the
    degradation, and the loss compares the net's output with that soft crop; σ near 0 leaves a crop as it is."""
    from dpir_fast.data.blur import blur, gaussian_kernel
    from dpir_fast.data.degrade import bicubic_downsample
    from dpir_fast.train.ir import IRTask

    x0, net = torch.rand(2, 3, 16, 16), Nearest()
    sigma = StepRandom(0, 3, Processes(), 2).rand() * 2.0
    soft = torch.cat([blur(x0[i:i + 1], gaussian_kernel(13, float(sigma[i]))) for i in range(2)])
    task = IRTask("sr4x", net, ImageFolder(photos, 16), 16, loss="mse", defocus=2.0)
    loss = task.loss(net, torch.arange(2), x0, StepRandom(0, 3, Processes(), 2))
    torch.testing.assert_close(net.seen, bicubic_downsample(soft, 4))
    torch.testing.assert_close(loss, ((net(net.seen) - soft) ** 2).mean())
    assert not torch.allclose(soft, x0) and task.record()["defocus"] == 2.0
    torch.testing.assert_close(blur(x0, gaussian_kernel(5, 0.0)), x0)
    with pytest.raises(ValueError, match="defocus"):
        IRTask("sr4x", net, ImageFolder(photos, 16), 16, defocus=-1.0)


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_denoiser_resume_is_exact_with_ema(photos, tmp_path):
    fit(_denoiser_task(photos), _config(tmp_path / "full", 6, ema=0.9), Processes())
    fit(_denoiser_task(photos), _config(tmp_path / "part", 3, ema=0.9), Processes())
    fit(_denoiser_task(photos), _config(tmp_path / "part", 6, ema=0.9, resume=True), Processes())
    full, part = read_state(tmp_path / "full" / "last.pt"), read_state(tmp_path / "part" / "last.pt")
    _same_weights(full["model"]["state_dict"], part["model"]["state_dict"])
    _same_weights(full["ema"], part["ema"])
    assert [r["loss"] for r in _log(tmp_path / "full")] == [r["loss"] for r in _log(tmp_path / "part")]
    exported = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    _same_weights(exported["state_dict"], {k: v for k, v in part["ema"].items()})


def _fusion_task(photos, pool) -> FusionTask:
    torch.manual_seed(1)
    ir, den = tiny_swinir(4), _tiny_mirnet()
    torch.manual_seed(2)
    fusion = FusionNet(n_feat=8, growth=4, time_hidden=8)
    return FusionTask("sr4x", fusion, ir, den, ImageFolder(photos, 16), 16, pool=pool, val=ImageFolder(photos, 16))


def test_fusion_resume_is_exact_and_ir_is_frozen(photos, tmp_path):
    full_task = _fusion_task(photos, pool=3)
    ir_before = {k: v.clone() for k, v in full_task.ir.state_dict().items()}
    result = fit(full_task, _config(tmp_path / "full", 4, val_every=4), Processes())
    assert {"val_psnr_ir", "val_psnr_t1", "val_psnr_t125", "val_psnr_t250"} <= set(result)
    _same_weights(ir_before, full_task.ir.state_dict())
    assert not full_task.ir.training and not full_task.denoiser.training and len(full_task.cache) == 3
    fit(_fusion_task(photos, 3), _config(tmp_path / "part", 2), Processes())
    fit(_fusion_task(photos, 3), _config(tmp_path / "part", 4, resume=True), Processes())
    _same_weights(read_state(tmp_path / "full" / "last.pt")["model"]["state_dict"],
                  read_state(tmp_path / "part" / "last.pt")["model"]["state_dict"])


class FakeBurstNet(nn.Module):
    """[B, N, 4, h, w] → [B, 3, 8h, 8w]: the base frame's planes shuffled up, as a stand-in for BSRT."""

    burst_frames = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3 * 64, 1)

    def forward(self, x):
        return nn.functional.pixel_shuffle(self.conv(x[:, 0]), 8)


@pytest.mark.parametrize("task", ["deblur", "burst"])
def test_deblur_and_burst_pairs_are_keyed_by_crop(task):
    ir = FakeBurstNet() if task == "burst" else nn.Conv2d(3, 3, 3, padding=1)
    x0 = torch.rand(2, 3, 32, 32)
    ids = torch.tensor([5, 9])
    a, b = ir_pair(task, ir, x0, ids, 0), ir_pair(task, ir, x0, ids, 0)
    assert a[0].shape == a[1].shape == x0.shape
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = ir_pair(task, ir, x0, torch.tensor([6, 9]), 0)
    assert not torch.equal(other[0][0], a[0][0]) and torch.equal(other[0][1], a[0][1])


def test_two_process_ddp_keeps_ranks_identical_and_resumes_on_one(photos, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_train import _config, _denoiser_task
        from dpir_fast.train import fit, start_processes, stop_processes
        procs = start_processes("cpu")
        task = _denoiser_task({str(photos)!r})
        fit(task, _config({str(tmp_path / "ddp")!r}, 3), procs)
        torch.save(task.model.state_dict(), {str(tmp_path)!r} + f"/rank{{procs.rank}}.pt")
        stop_processes()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    _same_weights(rank0, rank1)
    assert read_state(tmp_path / "ddp" / "last.pt")["world"] == 2
    # resume the 2-process run in one process; it follows the one-process run (same global batches and noise)
    fit(_denoiser_task(photos), _config(tmp_path / "ddp", 5, resume=True), Processes())
    fit(_denoiser_task(photos), _config(tmp_path / "single", 5), Processes())
    resumed = read_state(tmp_path / "ddp" / "last.pt")["model"]["state_dict"]
    single = read_state(tmp_path / "single" / "last.pt")["model"]["state_dict"]
    for k in single:
        assert torch.allclose(resumed[k], single[k], atol=1e-4, rtol=1e-3), k


def test_cli_train_fusion_writes_a_pipeline(photos, tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(tiny_swinir(4), tmp_path / "ir.pt")
    save_checkpoint(_tiny_mirnet(), tmp_path / "den.pt")
    code = cli.main(["train-fusion", "--task", "sr4x", "--ir-checkpoint", str(tmp_path / "ir.pt"),
                     "--denoiser-checkpoint", str(tmp_path / "den.pt"), "--data", str(photos), "--val-data",
                     str(photos), "--out", str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--crop", "16",
                     "--n-feat", "8", "--growth", "4", "--workers", "0", "--device", "cpu", "--pool", "4"])
    assert code == 0, capsys.readouterr().err
    pipe = DPIR.from_checkpoint(tmp_path / "run" / "pipeline.pt")
    assert pipe.nfe == 51 and pipe.fusion.config["n_feat"] == 8
    assert "val_psnr_t250" in _log(tmp_path / "run")[0]
    code = cli.main(["train-fusion", "--task", "sr4x", "--ir-checkpoint", str(tmp_path / "missing.pt"),
                     "--denoiser-checkpoint", str(tmp_path / "den.pt"), "--data", str(photos), "--device", "cpu"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_restore_under_torchrun_shards_files(monkeypatch, tmp_path):
    for i in range(5):
        Image.new("RGB", (6, 4), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "model.pt").write_bytes(b"fake")
    pipe = type("Pipe", (), {"scale": 2, "in_channels": 3, "device": torch.device("cpu"), "burst_frames": None,
                             "configure": lambda self, **settings: self,
                             "__call__": lambda self, y, seed=0: y.repeat_interleave(2, -1).repeat_interleave(2, -2)})()
    monkeypatch.setattr(cli, "_load_pipeline", lambda *args: pipe)
    written = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        out = tmp_path / f"out{rank}"
        assert cli.main(["restore", *(str(tmp_path / f"{i}.png") for i in range(5)), "-o", str(out),
                         "--checkpoint", str(tmp_path / "model.pt"), "--device", "cpu", "--quiet"]) == 0
        written[rank] = sorted(p.name for p in out.iterdir())
    assert written == {0: ["0.png", "2.png", "4.png"], 1: ["1.png", "3.png"]}


@pytest.mark.parametrize("anchor", [0.0, 1.0])
def test_fusion_ir_anchor_draws_x_t_around_x0_or_the_ir_estimate(photos, anchor):
    """ir_anchor 0: the paper's x_t ~ q(x_t | x0); 1: x_t around x_IR, as the jump gives the sampler."""
    task = _fusion_task(photos, 0)
    task.ir_anchor = anchor
    seen = []
    task.denoise = lambda centre, t, eps: seen.append(centre) or centre
    x0 = torch.rand(2, 3, 16, 16)
    ids = torch.tensor([0, 1])
    task.loss(task.model, ids, x0, StepRandom(0, 1, Processes(), 2))
    x_ir, target = task.ir_estimate(ids, x0)
    assert torch.equal(seen[0], x_ir if anchor else target) and not torch.equal(x_ir, target)
    with pytest.raises(TrainError, match="probability"):
        FusionTask("sr4x", task.model, task.ir, task.denoiser, ImageFolder(photos, 16), 16, ir_anchor=1.5)


def test_fusion_psnr_loss_is_the_mean_per_crop_log_error(photos):
    """loss "psnr": mean over crops of 10·log10(MSE + floor), so one crop's large error cannot outweigh the rest
    (errors of 0.1 and 0.01: with "mse" the worse crop pulls 10x harder, with "psnr" ~9x less: by error / MSE)."""
    task = _fusion_task(photos, 0)
    ids, x0 = torch.tensor([0, 1]), torch.rand(2, 3, 16, 16)
    x_ir, target = task.ir_estimate(ids, x0)
    offsets = torch.tensor([0.1, 0.01])[:, None, None, None]   # per-crop errors of 0.1 and 0.01 everywhere
    grads = {}
    for loss in LOSSES:
        task.loss_name = loss
        out = (target + offsets).requires_grad_()
        value = task.loss(lambda *_: out, ids, x0, StepRandom(0, 1, Processes(), 2))
        value.backward()
        grads[loss] = out.grad.abs().flatten(1).sum(1)
        if loss == "psnr":
            assert torch.allclose(value, (10 * torch.log10(offsets.flatten() ** 2 + PSNR_LOSS_FLOOR)).mean())
    assert grads["mse"][0] / grads["mse"][1] == pytest.approx(10)
    ratio = 10 * (1e-4 + PSNR_LOSS_FLOOR) / (1e-2 + PSNR_LOSS_FLOOR)
    assert grads["psnr"][0] / grads["psnr"][1] == pytest.approx(ratio)
    with pytest.raises(TrainError, match="loss must be one of"):
        FusionTask("sr4x", task.model, task.ir, task.denoiser, ImageFolder(photos, 16), 16, loss="l1")


def test_fusion_denoiser_sees_its_input_as_the_pipeline_runs_it(photos):
    """Training calls the frozen denoiser as the sampler does, mirrored margin included."""
    task = _fusion_task(photos, 0)
    pipe = DPIR(task.ir, task.denoiser, task.model)
    x0, t, eps = torch.rand(1, 3, 16, 16), torch.tensor([7]), torch.randn(1, 3, 16, 16)
    ab = float(task.alpha_bar[7])
    inp = denoiser_input_ref(ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps, 7, task.schedule)
    assert torch.allclose(task.denoise(x0, t, eps), pipe._denoise(inp).float(), atol=1e-6)


def test_anchored_fusion_is_also_validated_around_the_ir_estimate(photos):
    task = _fusion_task(photos, 0)
    anchored = FusionTask("sr4x", task.model, task.ir, task.denoiser, ImageFolder(photos, 16), 16,
                          val=ImageFolder(photos, 16), ir_anchor=1.0)
    scores = anchored.validate(task.model)
    columns = {"val_psnr_ir", *(f"val_psnr{c}_t{t}" for c in ("", "_anchor") for t in (1, 125, 250))}
    assert set(scores) == set(anchored.val_columns) == columns
    assert scores["val_psnr_anchor_t1"] != scores["val_psnr_t1"]
    assert set(task.validate(task.model)) == {"val_psnr_ir", "val_psnr_t1", "val_psnr_t125", "val_psnr_t250"}


def test_sigterm_saves_the_state_of_the_last_completed_step(photos, tmp_path):
    """kill (SIGTERM) stops a run as Ctrl-C does: last.pt holds the last completed step, and a resumed run ends
    where an uninterrupted one does; the process's own SIGTERM handler is back afterwards."""
    task = _denoiser_task(photos)
    calls = []

    def loss(net, ids, x0, rnd, plain=task.loss):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return plain(net, ids, x0, rnd)

    task.loss = loss
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        fit(task, _config(tmp_path / "part", 6, ckpt_every=100), Processes())
    assert signal.getsignal(signal.SIGTERM) is before
    assert read_state(tmp_path / "part" / "last.pt")["step"] == 3
    fit(_denoiser_task(photos), _config(tmp_path / "part", 6, resume=True), Processes())
    fit(_denoiser_task(photos), _config(tmp_path / "full", 6), Processes())
    _same_weights(read_state(tmp_path / "full" / "last.pt")["model"]["state_dict"],
                  read_state(tmp_path / "part" / "last.pt")["model"]["state_dict"])
