"""Train the shipped demo weights (dpir_fast/pretrained/demo_sr4x.pt) from scratch on CPU, and evaluate them.

    pip install scikit-image            # the training photos; not a dependency of dpir_fast
    python scripts/train_demo.py --work runs/demo

Stages (``--stage``): data (public-domain / CC0 photos of scikit-image into WORK/data), ir (lightweight
SwinIR ×4) and denoiser (small MIRNet) — run side by side, one thread each —, fusion (FusionNet, the two others
frozen), export (the fp16 pipeline file and the sample image into dpir_fast/pretrained/), eval (PSNR/SSIM on the
held-out photos: bicubic, IR net alone, DP-IR). ``all`` runs them in order. Every stage is seeded; the numbers
and times of the shipped file are in dpir_fast/pretrained/MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpir_fast import DPIR, save_checkpoint  # noqa: E402
from dpir_fast.checkpoints import build_model  # noqa: E402
from dpir_fast.data.datasets import ImageFolder  # noqa: E402
from dpir_fast.data.degrade import bicubic_downsample, imresize  # noqa: E402
from dpir_fast.data.images import read_image, write_image  # noqa: E402
from dpir_fast.metrics import psnr, ssim  # noqa: E402
from dpir_fast.models import FusionNet, MIRNet, swinir_lightweight_sr4  # noqa: E402
from dpir_fast.pipeline import PRESETS  # noqa: E402
from dpir_fast.train import DenoiserTask, FusionTask, IRTask, Processes, TrainConfig, fit  # noqa: E402

TRAIN = ["astronaut", "rocket", "hubble_deep_field", "retina", "camera", "brick", "grass", "gravel"]
HELD_OUT = ["coffee", "cat"]  # skimage.data.cat() is the photo "chelsea"
SAMPLE = ("cat", (60, 110), 128)  # the bundled sample: a 128×128 crop (top, left) of the held-out cat photo
PRETRAINED = REPO / "dpir_fast" / "pretrained"

IR_CONFIG = dict(embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=8, img_size=24)
DENOISER_CONFIG = dict(in_channels=4, out_channels=3, n_feat=16, n_rrg=1, n_msrb=1, height=3, width=2)
FUSION_CONFIG = dict(n_feat=32, growth=16, time_dim=32, time_hidden=32)
# The sampler shipped in the file. The paper's sr4x preset (τ 250, 50 DDIM steps) runs these tiny networks too
# long: their denoiser is weak at low noise and the chain drifts below bicubic on the cat photo (MODEL_CARD.md);
# τ was chosen among 5, 20, 50, 100, 250 on that photo, coffee stayed untouched.
SHIPPED_SAMPLER = dict(tau=5, tail="ancestral", tail_steps=None)
RECIPES = {  # steps, global batch, crop (HR), lr, decay, decay every
    "ir": dict(steps=2000, batch=8, crop=96, lr=1e-3, lr_decay=0.5, lr_every=700),
    "denoiser": dict(steps=1000, batch=8, crop=48, lr=5e-4, lr_decay=0.5, lr_every=400),
    "fusion": dict(steps=600, batch=8, crop=48, lr=5e-4, lr_decay=0.5, lr_every=250),
}


def stage_data(work: Path) -> None:
    import skimage.data
    from PIL import Image
    for split, names in (("train", TRAIN), ("heldout", HELD_OUT)):
        (work / "data" / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(work / "data" / split / f"{name}.png")


def _config(work: Path, name: str) -> TrainConfig:
    r = RECIPES[name]
    return TrainConfig(out=work / name, steps=r["steps"], batch=r["batch"], lr=r["lr"], lr_decay=r["lr_decay"],
                       lr_every=r["lr_every"], seed=0, ckpt_every=500, val_every=500, log_every=50, workers=0,
                       resume=True)


def stage_train(work: Path, name: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    r = RECIPES[name]
    data = ImageFolder(work / "data" / "train", min_size=r["crop"])
    val = ImageFolder(work / "data" / "heldout", min_size=r["crop"])
    if name == "ir":
        task = IRTask("sr4x", swinir_lightweight_sr4(**IR_CONFIG), data, r["crop"], val=val)
    elif name == "denoiser":
        task = DenoiserTask(MIRNet(**DENOISER_CONFIG), data, r["crop"], val=val, val_crop=96)
    else:
        ir, den = (_load(work / part / "model.pt") for part in ("ir", "denoiser"))
        task = FusionTask("sr4x", FusionNet(**FUSION_CONFIG), ir, den, data, r["crop"], pool=2048, val=val)
    started = time.time()
    result = fit(task, _config(work, name), Processes())
    (work / name / "time.json").write_text(json.dumps({"seconds": time.time() - started, **result}))


def _load(path: Path) -> torch.nn.Module:
    return build_model(torch.load(path, map_location="cpu", weights_only=True))


def stage_export(work: Path) -> None:
    pipe = DPIR(*(_load(work / p / "model.pt") for p in ("ir", "denoiser", "fusion")), **SHIPPED_SAMPLER)
    record = torch.load(save_checkpoint(pipe, work / "demo_sr4x_fp32.pt"), weights_only=True)
    for part in ("ir", "denoiser", "fusion"):
        sd = record[part]["state_dict"]
        record[part]["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(record, PRETRAINED / "demo_sr4x.pt")
    name, (top, left), size = SAMPLE
    x, info = read_image(work / "data" / "heldout" / f"{name}.png")
    write_image(PRETRAINED / "sample.png", x[..., top:top + size, left:left + size], info)


def stage_eval(work: Path, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    pipe = DPIR.from_pretrained("demo-sr4x")
    rows = {}
    for name in HELD_OUT:
        x0, _ = read_image(work / "data" / "heldout" / f"{name}.png")
        h, w = (s - s % 4 for s in x0.shape[-2:])
        x0 = x0[..., :h, :w]
        y = bicubic_downsample(x0, 4)
        outs, seconds = {"bicubic": imresize(y, 4).clamp(0, 1), "ir": pipe.restore_ir(y).clamp(0, 1)}, {}
        for label, sampler in (("dpir", SHIPPED_SAMPLER), ("dpir_paper_preset", PRESETS["sr4x"])):
            started = time.time()
            outs[label] = pipe.configure(**sampler)(y, seed)
            seconds[label] = time.time() - started
        rows[name] = {k: {"psnr_y": float(psnr(v, x0, 4, True)), "ssim_y": float(ssim(v, x0, 4, True)),
                          "psnr_rgb": float(psnr(v, x0, 4))} for k, v in outs.items()}
        rows[name].update(seconds=seconds, size=[h, w])
    (work / "eval.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--stage", default="all", choices=["all", "data", "ir", "denoiser", "fusion", "export", "eval"])
    args = parser.parse_args()
    work = args.work.resolve()
    if args.stage in ("data", "all"):
        stage_data(work)
    if args.stage == "all":  # the IR net and the denoiser are independent: train them side by side
        procs = [subprocess.Popen([sys.executable, __file__, "--work", str(work), "--stage", stage])
                 for stage in ("ir", "denoiser")]
        if any(p.wait() for p in procs):
            sys.exit("a training stage failed")
    elif args.stage in ("ir", "denoiser"):
        stage_train(work, args.stage)
    if args.stage in ("fusion", "all"):
        stage_train(work, "fusion")
    if args.stage in ("export", "all"):
        stage_export(work)
    if args.stage in ("eval", "all"):
        stage_eval(work)


if __name__ == "__main__":
    main()
