"""Train the shipped demo weights (dpir_fast/pretrained/demo_sr4x.pt) from scratch on CPU, and evaluate them.

    pip install scikit-image            # the skimage photos; not a dependency of dpir_fast
    python scripts/train_demo.py --work runs/demo

Stages (``--stage``, ``all`` runs them in order; each resumes where it stopped):
  data      the images (scripts/demo_data.py: skimage photos, Debian wallpapers, dead leaves; train/val/test,
            and camera photos for deblurring in photo/photo_val)
  ir        CompactSR ×4, L1 loss                           } side by side,
  denoiser  a narrow MIRNet on [x̃, σ̃]                       } one thread each
  ir-ft     that IR net fine-tuned on minus the mean PSNR of its crops (loss "psnr")
  denoiser-ft  that denoiser fine-tuned with every noise level of the demos' steps weighed alike (loss "eps"),
            flat colours included: the denoiser both demos ship
  fusion    FusionNet on the ir-ft net's outputs, both nets frozen (training images and flat colours)
  ir-photo  the ir net fine-tuned as ir-ft, with film grain and some JPEG colour: the IR net demo-sr4x ships
  tune      the IR self-ensemble, then τ, chosen on the val split (centre crops), never on test
  export    the fp16 pipeline file into dpir_fast/pretrained/
  eval      bicubic / IR net / DP-IR on val and test, WORK/eval.json (the numbers of MODEL_CARD.md)
  deblur-ir the deblurring IR net (CompactUNet) on the camera-shake generator (dpir_fast.data.blur) with a
            little noise, for the demo-deblur pipeline (it reuses this denoiser); not part of ``all``, nor are
  deblur-ir-ft  its fine-tuning at a lower learning rate with an EMA of the weights,
  deblur-fusion  its FusionNet on the deblur-ir-ft net's outputs (as ``fusion``),
  deblur-ir-psnr  the deblur-ir-ft net fine-tuned on the psnr loss,
  deblur-ir-photo  that net fine-tuned with camera photos (WORK/data/photo) and film grain: the IR net demo-deblur
            ships,
  deblur-tune, deblur-export, deblur-eval
            its self-ensemble and τ on val and photo_val blurred by the generator,
            dpir_fast/pretrained/demo_deblur.pt, and scores on val (with photo_val) and test for three blur families
            (scripts/demo_deblur.py)
Training runs under bf16 autocast with channels_last tensors where the CPU has native bf16 (fp32 master
weights), fp32 elsewhere. Every stage is seeded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import demo_data  # noqa: E402
import demo_deblur  # noqa: E402

from dpir_fast import DPIR, save_checkpoint  # noqa: E402
from dpir_fast._backend import default_precision  # noqa: E402
from dpir_fast.checkpoints import build_model  # noqa: E402
from dpir_fast.data.datasets import ImageFolder, center_crops  # noqa: E402
from dpir_fast.data.degrade import bicubic_downsample, imresize  # noqa: E402
from dpir_fast.metrics import psnr, ssim  # noqa: E402
from dpir_fast.models import CompactSR, CompactUNet, FusionNet, MIRNet  # noqa: E402
from dpir_fast.pipeline import IR_ENSEMBLES  # noqa: E402
from dpir_fast.schedule import Schedule  # noqa: E402
from dpir_fast.train import DenoiserTask, FusionTask, IRTask, Processes, TrainConfig, fit, read_state  # noqa: E402

PRETRAINED = REPO / "dpir_fast" / "pretrained"
IR_CONFIG = dict(n_feat=64, n_blocks=10, scale=4)
DENOISER_CONFIG = dict(in_channels=4, out_channels=3, n_feat=32, n_rrg=1, n_msrb=1, height=3, width=2)
FUSION_CONFIG = dict(n_feat=32, growth=16, time_dim=32, time_hidden=32, padding="reflect")
UNET_CONFIG = dict(n_feat=32, mults=[1, 2, 3, 4], blocks=1)
T_MAX = 25                 # fusion trained on t ~ U{1..T_MAX}; τ is chosen among TAUS ≤ T_MAX
SIGMA_MAX = 25 / 255       # the denoiser's noise range: σ̃(t) ≤ 23.5/255 for t ≤ 25
SIGMA_MIN = Schedule.linear().sigma_tilde(1)   # 2.55/255: the level of the last step, t = 1
TAUS = (1, 2, 3, 5, 10)
TAU_TOLERANCE_DB = 0.01    # for τ and the IR self-ensemble: see _cheapest
EVAL_CROP = 256            # HR centre crops for tune and eval (LR 64×64)
SMOOTH_DB = 40.0           # a crop is "smooth" when bicubic upsampling already reaches this PSNR
# data (the WORK/data folders trained on; train if not named; images smaller than the crop are left out), steps,
# global batch, HR crop, Adam lr, staircase decay, decay every. IR nets: task, init (the stage whose net is
# fine-tuned; none: from scratch), loss, grain, defocus, chroma (IRTask). Fusions: ir (the stage of the frozen IR net
# whose outputs it learns on), ir_anchor, pool, loss (FusionTask).
RECIPES = {
    "ir": dict(task="sr4x", steps=6000, batch=16, crop=192, lr=5e-4, lr_decay=0.5, lr_every=2000, loss="l1"),
    # then minus the crops' mean PSNR: with L1 over the batch, textured crops and dead leaves set the gradient
    "ir_ft": dict(task="sr4x", init="ir", steps=1000, batch=8, crop=128, lr=1e-4, lr_decay=0.5, lr_every=400,
                  loss="psnr"),
    # the same with film grain, and JPEG colour on a tenth of the crops: on smooth, grainy photos the net then adds
    # less detail it cannot know
    "ir_photo": dict(task="sr4x", init="ir", steps=1000, batch=8, crop=128, lr=1e-4, lr_decay=0.5, lr_every=400,
                     loss="psnr", grain=0.01176, chroma=0.1),   # grain: 3/255 as run
    "denoiser": dict(steps=4000, batch=8, crop=64, lr=4e-4, lr_decay=0.5, lr_every=1500),
    # then every noise level the demos' steps see weighed alike (loss "eps"), flat colours included
    "denoiser_ft": dict(data=("train", "flat"), steps=1500, batch=8, crop=64, lr=1e-4, lr_decay=0.5, lr_every=600),
    "fusion": dict(ir="ir_ft", data=("train", "flat"), steps=2000, batch=8, crop=64, lr=5e-4, lr_decay=0.5,
                   lr_every=700, ir_anchor=1.0, pool=2048, loss="psnr"),
    "deblur_ir": dict(task="deblur", steps=20000, batch=8, crop=128, lr=5e-4, lr_decay=0.5, lr_every=8000, loss="l1"),
    # then on the shake generator's full range of sizes (see stage_train), weights averaged
    "deblur_ir_ft": dict(task="deblur", init="deblur_ir", steps=2000, batch=8, crop=128, lr=2e-4, lr_decay=0.5,
                         lr_every=800, loss="l1", ema=0.999),
    # then minus the crops' mean PSNR, as ir_ft: the soft and smooth crops count as much as the textured ones
    "deblur_ir_psnr": dict(task="deblur", init="deblur_ir_ft", steps=1000, batch=8, crop=128, lr=1e-4, lr_decay=0.5,
                           lr_every=400, loss="psnr", ema=0.999),
    # then with the camera photos of WORK/data/photo added to the training images (the rest are mostly renders and
    # dead leaves: on photos the net gained 0.4-0.6 dB where it gained 2-7 dB on renders), and film grain
    "deblur_ir_photo": dict(task="deblur", init="deblur_ir_psnr", data=("train", "photo"), steps=1000, batch=8,
                            crop=128, lr=1e-4, lr_decay=0.5, lr_every=400, loss="psnr", ema=0.999, grain=0.01176),
    # loss "psnr": with the MSE (the sr4x recipe) the dead leaves' errors, 10-50x the photos', set the loss, and the
    # fusion learnt to smooth x_IR (DP-IR 0.5 dB below the IR net on val); crops as large as the IR net's
    "deblur_fusion": dict(ir="deblur_ir_ft", steps=1200, batch=4, crop=128, lr=2e-4, lr_decay=0.5, lr_every=500,
                          ir_anchor=1.0, ema=0.995, pool=1024, loss="psnr"),
}
DENOISER = "denoiser_ft"    # the WORK subfolder of the denoiser every demo ships: "denoiser" fine-tuned
# per demo: WORK subfolders of its IR net and fusion, its τ record, the file shipped in dpir_fast/pretrained, the
# WORK/data folders of its validation images (deblurring: with the val photos, the pictures it gains least on). Each
# fusion was trained on the outputs of an earlier version of its IR net (RECIPES[fusion]["ir"]); on val DP-IR still
# stays within 0.01 dB of the shipped IR net or above it, so retraining it (an hour of CPU) is left for later
DEMOS = {"sr4x": dict(ir="ir_photo", fusion="fusion", tune="tune.json", file="demo_sr4x.pt", val=("val",)),
         "deblur": dict(ir="deblur_ir_photo", fusion="deblur_fusion", tune="deblur_tune.json", file="demo_deblur.pt",
                        val=("val", "photo_val"))}


def _config(work: Path, name: str) -> TrainConfig:
    r = RECIPES[name]
    return TrainConfig(out=work / name, steps=r["steps"], batch=r["batch"], lr=r["lr"], lr_decay=r["lr_decay"],
                       lr_every=r["lr_every"], seed=0, ema=r.get("ema", 0.0),
                       precision=default_precision("cpu")[0], ckpt_every=250,
                       val_every=1000, log_every=50, workers=0, resume=True)


def _load(path: Path) -> torch.nn.Module:
    return build_model(torch.load(path, map_location="cpu", weights_only=True))


def _folders(work: Path, crop: int, train=("train",)) -> tuple[ImageFolder, ImageFolder]:
    return (ImageFolder([work / "data" / name for name in train], min_size=crop),
            ImageFolder(work / "data" / "val", min_size=crop))


def stage_train(work: Path, name: str) -> None:
    torch.manual_seed(0)
    r = RECIPES[name]
    state = work / name / "last.pt"
    if state.exists() and read_state(state)["step"] >= r["steps"]:   # keep its time.json: nothing to train
        print(f"{name}: all {r['steps']} steps done ({state})", flush=True)
        return
    data, val = _folders(work, r["crop"], r.get("data", ("train",)))
    if "task" in r:
        # deblur_ir_ft continues deblur_ir (20000 steps), whose steps in scripts/demo_states were run before the
        # generator's trajectories stopped depending on their step count (most of its kernels then spanned 3-5 px)
        if "init" in r:
            net = _load(work / r["init"] / "model.pt")
        else:
            net = CompactSR(**IR_CONFIG) if r["task"] == "sr4x" else CompactUNet(**UNET_CONFIG)
        task = IRTask(r["task"], net.to(memory_format=torch.channels_last), data, r["crop"], val=val, loss=r["loss"],
                      grain=r.get("grain", 0.0), defocus=r.get("defocus", 0.0), chroma=r.get("chroma", 0.0))
    elif name == "denoiser":
        task = DenoiserTask(MIRNet(**DENOISER_CONFIG).to(memory_format=torch.channels_last), data, r["crop"],
                            sigma_max=SIGMA_MAX, val=val, val_crop=128, val_sigmas=(5, 10, 25))
    elif name == "denoiser_ft":
        task = DenoiserTask(_load(work / "denoiser" / "model.pt").to(memory_format=torch.channels_last), data,
                            r["crop"], sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, loss="eps", val=val, val_crop=128,
                            val_sigmas=(2.55, 5, 10, 25))
    else:
        demo = "deblur" if name == "deblur_fusion" else "sr4x"
        ir, den = _load(work / r["ir"] / "model.pt"), _load(work / DENOISER / "model.pt")
        fusion = FusionNet(**FUSION_CONFIG)
        torch.nn.init.zeros_(fusion.conv_out.weight)  # start from the IR estimate (residual="ir")
        torch.nn.init.zeros_(fusion.conv_out.bias)
        task = FusionTask(demo, fusion.to(memory_format=torch.channels_last), ir, den, data, r["crop"], t_max=T_MAX,
                          pool=r["pool"], val=val, ir_anchor=r["ir_anchor"], loss=r["loss"])
    started = time.time()
    result = fit(task, _config(work, name), Processes())
    (work / name / "time.json").write_text(json.dumps({"seconds": time.time() - started, **result}))


def _pipeline(work: Path, demo: str, **sampler) -> DPIR:
    parts = (_load(work / p / "model.pt") for p in (DEMOS[demo]["ir"], DENOISER, DEMOS[demo]["fusion"]))
    return DPIR(*parts, **sampler)


def _degraded(demo: str, x0: torch.Tensor, family: str = "generator") -> torch.Tensor:
    """The IR net's input for the clean crops x0: MATLAB bicubic ×4, or blur of ``family`` (demo_deblur.py)."""
    return bicubic_downsample(x0, 4) if demo == "sr4x" else demo_deblur.blurred(x0, family)


def _crops(work: Path, *splits: str) -> tuple[list[str], torch.Tensor]:
    folder = ImageFolder([work / "data" / split for split in splits], min_size=EVAL_CROP)
    return [p.stem for p in folder.paths], center_crops(folder, EVAL_CROP)


def _cheapest(scores: dict) -> int:
    """The smallest setting whose mean val PSNR is within TAU_TOLERANCE_DB of the best (each unit costs network
    evaluations; smaller differences are below what a dozen crops tell)."""
    return min(k for k in scores if scores[k] >= max(scores.values()) - TAU_TOLERANCE_DB)


def stage_tune(work: Path, demo: str = "sr4x") -> dict:
    """By the mean PSNR on the val crops: first the IR self-ensemble (``ir_ensemble``, by the IR estimate),
    then τ (ancestral tail, by DP-IR), each the cheapest within TAU_TOLERANCE_DB of its best. Deblurring: on the
    generator's kernels, those the networks were trained on."""
    _, x0 = _crops(work, *DEMOS[demo]["val"])
    y = _degraded(demo, x0)
    pipe = _pipeline(work, demo, tail="ancestral")
    ensembles = {}
    for n in IR_ENSEMBLES:
        ensembles[n] = float(psnr(pipe.configure(ir_ensemble=n).restore_ir(y).clamp(0, 1), x0).mean())
        print(f"ir_ensemble {n}: val PSNR of the IR net {ensembles[n]:.3f}", flush=True)
    pipe.configure(ir_ensemble=_cheapest(ensembles))
    scores = {}
    for tau in TAUS:
        out = pipe.configure(tau=tau)(y, seed=0).clamp(0, 1)
        scores[tau] = float(psnr(out, x0).mean())
        print(f"tau {tau}: val PSNR {scores[tau]:.3f}", flush=True)
    record = {"ir_ensemble": _cheapest(ensembles), "tau": _cheapest(scores), "tail": "ancestral",
              "val_psnr_ir_ensemble": ensembles, "val_psnr": scores}
    (work / DEMOS[demo]["tune"]).write_text(json.dumps(record, indent=1))
    return record


def stage_export(work: Path, demo: str = "sr4x") -> None:
    tune = json.loads((work / DEMOS[demo]["tune"]).read_text())
    pipe = _pipeline(work, demo, tau=tune["tau"], tail=tune["tail"], ir_ensemble=tune["ir_ensemble"])
    file = DEMOS[demo]["file"]
    record = torch.load(save_checkpoint(pipe, work / file.replace(".pt", "_fp32.pt")), weights_only=True)
    for part in ("ir", "denoiser", "fusion"):
        sd = record[part]["state_dict"]
        record[part]["state_dict"] = {k: v.half().contiguous() if v.is_floating_point() else v
                                      for k, v in sd.items()}
    torch.save(record, PRETRAINED / file)


def _scores(out: torch.Tensor, x0: torch.Tensor) -> dict:
    return {"psnr": float(psnr(out, x0)), "psnr_y": float(psnr(out, x0, 4, True)),
            "ssim_y": float(ssim(out, x0, 4, True))}


def stage_eval(work: Path, seed: int = 0) -> dict:
    """Per image of val and test: PSNR (RGB, whole crop; Y with 4 px shaved) and SSIM-Y of bicubic, the IR net
    and DP-IR on the centre crops; WORK/eval.json."""
    pipe = DPIR.from_pretrained("demo-sr4x")
    rows = {}
    for split in ("val", "test"):
        names, x0 = _crops(work, split)
        y = bicubic_downsample(x0, 4)
        outs = {"bicubic": imresize(y, 4).clamp(0, 1), "ir": pipe.restore_ir(y).clamp(0, 1),
                "dpir": pipe(y, seed=seed).clamp(0, 1)}
        for i, name in enumerate(names):
            rows[f"{split}/{name}"] = {k: _scores(v[i:i + 1], x0[i:i + 1]) for k, v in outs.items()}
    (work / "eval.json").write_text(json.dumps(rows, indent=1))
    (work / "eval.md").write_text(summary(rows))
    print(summary(rows))
    return rows


def stage_eval_deblur(work: Path, seed: int = 0) -> dict:
    """Per image of val and test and per blur family (demo_deblur.FAMILIES): PSNR and SSIM-Y of the blurred
    input, the IR net and DP-IR against the sharp crop; WORK/deblur_eval.json and deblur_eval.md."""
    pipe = DPIR.from_checkpoint(PRETRAINED / DEMOS["deblur"]["file"])
    rows, lines = {}, ["| split | blur | images | blurred PSNR | IR PSNR (gain) | DP-IR PSNR (gain) | DP-IR − IR |",
                       "|" + " --- |" * 7]
    for split, folders in (("val", DEMOS["deblur"]["val"]), ("test", ("test",))):
        names, x0 = _crops(work, *folders)
        for family in demo_deblur.FAMILIES:
            y = _degraded("deblur", x0, family)
            outs = {"blurred": y, "ir": pipe.restore_ir(y).clamp(0, 1), "dpir": pipe(y, seed=seed).clamp(0, 1)}
            for i, name in enumerate(names):
                rows[f"{split}/{family}/{name}"] = {k: _scores(v[i:i + 1], x0[i:i + 1]) for k, v in outs.items()}
            mean = {k: sum(rows[f"{split}/{family}/{n}"][k]["psnr"] for n in names) / len(names) for k in outs}
            lines.append(f"| {split} | {family} | {len(names)} | {mean['blurred']:.2f} | {mean['ir']:.2f} "
                         f"({mean['ir'] - mean['blurred']:+.2f}) | {mean['dpir']:.2f} "
                         f"({mean['dpir'] - mean['blurred']:+.2f}) | {mean['dpir'] - mean['ir']:+.2f} |")
            print(lines[-1], flush=True)
    (work / "deblur_eval.json").write_text(json.dumps(rows, indent=1))
    (work / "deblur_eval.md").write_text("\n".join(lines) + "\n")
    return rows


def summary(rows: dict) -> str:
    """A markdown table per split and kind (smooth: bicubic ≥ SMOOTH_DB; textured: below) of mean PSNR/SSIM
    and the gains over bicubic, then one line per image."""
    lines = ["| split | kind | images | bicubic PSNR | IR PSNR (gain) | DP-IR PSNR (gain) | IR / DP-IR below bicubic "
             "| PSNR-Y bicubic / IR / DP-IR | SSIM-Y bicubic / IR / DP-IR |", "|" + " --- |" * 9]
    for split in ("val", "test"):
        for kind in ("textured", "smooth"):
            group = [r for k, r in rows.items() if k.startswith(split + "/")
                     and (r["bicubic"]["psnr"] >= SMOOTH_DB) == (kind == "smooth")]
            if not group:
                continue
            mean = {m: {k: sum(r[m][k] for r in group) / len(group) for k in ("psnr", "psnr_y", "ssim_y")}
                    for m in ("bicubic", "ir", "dpir")}
            gain = {m: mean[m]["psnr"] - mean["bicubic"]["psnr"] for m in ("ir", "dpir")}
            below = [sum(r[m]["psnr"] < r["bicubic"]["psnr"] for r in group) for m in ("ir", "dpir")]
            lines.append(f"| {split} | {kind} | {len(group)} | {mean['bicubic']['psnr']:.2f} | "
                         f"{mean['ir']['psnr']:.2f} ({gain['ir']:+.2f}) | {mean['dpir']['psnr']:.2f} "
                         f"({gain['dpir']:+.2f}) | {below[0]} / {below[1]} | "
                         + " / ".join(f"{mean[m]['psnr_y']:.2f}" for m in ("bicubic", "ir", "dpir")) + " | "
                         + " / ".join(f"{mean[m]['ssim_y']:.4f}" for m in ("bicubic", "ir", "dpir")) + " |")
    lines += ["", "| image | bicubic | IR net | DP-IR |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {r['bicubic']['psnr']:.2f} | {r['ir']['psnr']:.2f} | {r['dpir']['psnr']:.2f} |"
              for k, r in rows.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--stage", default="all",
                        choices=["all", "data", "ir", "ir-ft", "denoiser", "denoiser-ft", "fusion", "ir-photo",
                                 "tune", "export", "eval", "deblur-ir", "deblur-ir-ft", "deblur-fusion",
                                 "deblur-ir-psnr", "deblur-ir-photo", "deblur-tune", "deblur-export",
                                 "deblur-eval"])
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: 1 to train, leaving the other cores to other work; half the "
                             "cores to tune and evaluate)")
    args = parser.parse_args()
    work = args.work.resolve()
    evaluating = args.stage.endswith(("tune", "eval", "export"))
    torch.set_num_threads(args.threads or (max(1, os.cpu_count() // 2) if evaluating else 1))
    manifest = work / "data" / "manifest.json"
    if args.stage in ("data", "all") and not (manifest.exists() and "photo" in json.loads(manifest.read_text())):
        demo_data.build(work)   # deterministic: a WORK from before the photo split is rebuilt to the same images
    if args.stage == "all":  # the IR net and the denoiser are independent: train them side by side
        procs = [subprocess.Popen([sys.executable, __file__, "--work", str(work), "--stage", stage])
                 for stage in ("ir", "denoiser")]
        if any(p.wait() for p in procs):
            sys.exit("a training stage failed")
    elif args.stage in ("ir", "denoiser", "deblur-ir", "deblur-ir-ft", "deblur-fusion", "deblur-ir-psnr",
                        "deblur-ir-photo"):
        stage_train(work, args.stage.replace("-", "_"))
    elif args.stage == "deblur-tune":
        stage_tune(work, "deblur")
    elif args.stage == "deblur-export":
        stage_export(work, "deblur")
    elif args.stage == "deblur-eval":
        stage_eval_deblur(work)
    for stage, run in (("ir-ft", lambda: stage_train(work, "ir_ft")),
                       ("denoiser-ft", lambda: stage_train(work, "denoiser_ft")),
                       ("fusion", lambda: stage_train(work, "fusion")),
                       ("ir-photo", lambda: stage_train(work, "ir_photo")), ("tune", lambda: stage_tune(work)),
                       ("export", lambda: stage_export(work)), ("eval", lambda: stage_eval(work))):
        if args.stage in (stage, "all"):
            run()


if __name__ == "__main__":
    main()
