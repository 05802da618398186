"""``dpir-fast train-denoiser`` and ``dpir-fast train-fusion``: argument parsers and command bodies.

Both run as one process or under ``torchrun --nproc_per_node N`` (DDP; ``--batch`` is the global batch).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, build_model, load_checkpoint, read_checkpoint, save_checkpoint
from ..data.datasets import DatasetError, ImageFolder
from ..pipeline import PRESETS
from .common import Processes, TrainError, start_processes, stop_processes
from .loop import TrainConfig, fit, read_state

DEFAULT_IR = {"sr4x": "swinir_classical_sr4", "deblur": "fftformer_gopro", "burst": "bsrt_small"}


def _common_options(p: argparse.ArgumentParser, out: str, steps: int, batch: int, crop: int, lr: float,
                    decay: float, every: int) -> None:
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="DIR", help="training image folders")
    p.add_argument("--val-data", type=Path, nargs="+", metavar="DIR", help="held-out images for validation")
    p.add_argument("-o", "--out", type=Path, default=Path(out), metavar="DIR",
                   help=f"run folder: last.pt, model.pt, log.csv (default {out})")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--batch", type=int, default=batch, help=f"global batch, split over processes (default {batch})")
    p.add_argument("--crop", type=int, default=crop, help=f"training crop size (default {crop})")
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr})")
    p.add_argument("--lr-decay", type=float, default=decay, help=f"lr factor every --lr-every steps ({decay})")
    p.add_argument("--lr-every", type=int, default=every, help=f"steps between lr decays (default {every})")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY", help="EMA of the weights (e.g. 0.999)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (torchrun: one GPU per process)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per process (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, crops and noise")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (any number of processes)")
    p.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    p.add_argument("--val-every", type=int, default=1000, help="steps between validations (default 1000)")
    p.add_argument("--log-every", type=int, default=20, help="steps between log lines (default 20)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_parsers(sub) -> None:
    """Register train-denoiser and train-fusion on the CLI's subparsers."""
    p = sub.add_parser("train-denoiser", help="train the Gaussian denoiser (MIRNet-S by default)",
                       description="Train the task-agnostic denoiser: MSE, σ uniform in [0, 244.3/255], Adam "
                                   "2e-4 × 0.999 every 2000 steps, random crops and flips (the paper's recipe).")
    _common_options(p, "runs/denoiser", 1_000_000, 8, 192, 2e-4, 0.999, 2000)
    p.add_argument("--sigma-max", type=float, default=244.3, help="largest σ, 0-255 scale (default 244.3)")
    p.add_argument("--sigma-min", type=float, default=0.0, help="smallest σ, 0-255 scale (default 0)")
    p.add_argument("--loss", choices=["x0", "eps"], default="x0",
                   help="x0: MSE to the clean image (the paper's, default); eps: each sample weighed by 1/σ² "
                        "(every noise level counts alike; for small τ; needs --sigma-min > 0)")
    p.add_argument("--val-sigmas", default="15,25,50", help="validation σ values, 0-255 scale")
    for name, default in (("n-feat", 64), ("n-rrg", 3), ("n-msrb", 1), ("height", 3), ("width", 2)):
        p.add_argument(f"--{name}", type=int, default=default, help=f"MIRNet {name} (default {default})")
    p.set_defaults(func=cmd_train_denoiser)

    p = sub.add_parser("train-fusion", help="train a task's fusion network (IR net and denoiser frozen)",
                       description="Train the fusion network of a task: t uniform in [1, τ_max], x_t ~ q(x_t|x0), "
                                   "MSE of the fused estimate to x0; Adam 1e-4 × 0.99 every 1000 steps.")
    _common_options(p, "runs/fusion", 300_000, 128, 256, 1e-4, 0.99, 1000)
    p.add_argument("--task", choices=sorted(PRESETS), required=True)
    p.add_argument("--ir-checkpoint", type=Path, required=True, metavar="FILE",
                   help="IR net: a dpir_fast model/pipeline file, or official weights of --ir-arch")
    p.add_argument("--ir-arch", help="factory in dpir_fast.models for official IR weights "
                                     f"(default per task: {DEFAULT_IR})")
    p.add_argument("--denoiser-checkpoint", type=Path, required=True, metavar="FILE",
                   help="denoiser: model.pt of train-denoiser, a pipeline file, or official MIRNet-S weights")
    p.add_argument("--t-max", type=int, help="largest training timestep (default: the task's τ)")
    p.add_argument("--ir-anchor", type=float, default=0.0, metavar="P",
                   help="fraction of samples whose x_t is drawn around the IR estimate instead of x0 (default 0, "
                        "the paper; the shipped demos use 1: see dpir_fast/pretrained/MODEL_CARD.md)")
    p.add_argument("--pool", type=int, default=0, metavar="N",
                   help="train on a fixed set of N crops whose IR outputs are computed once (default 0: fresh)")
    p.add_argument("--n-feat", type=int, default=64, help="FusionNet n_feat (default 64)")
    p.add_argument("--growth", type=int, default=32, help="FusionNet dense growth (default 32)")
    p.set_defaults(func=cmd_train_fusion)


def _config(args) -> TrainConfig:
    for name in ("steps", "batch", "crop", "lr_every", "ckpt_every", "val_every", "log_every"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return TrainConfig(out=args.out, steps=args.steps, batch=args.batch, lr=args.lr, lr_decay=args.lr_decay,
                       lr_every=args.lr_every, seed=args.seed, ema=args.ema, precision=args.precision,
                       ckpt_every=args.ckpt_every, val_every=args.val_every, log_every=args.log_every,
                       workers=args.workers, resume=args.resume, quiet=args.quiet)


def _folders(args, procs: Processes, crop: int) -> tuple[ImageFolder, ImageFolder | None]:
    data = ImageFolder(args.data, min_size=crop)
    val = ImageFolder(args.val_data, min_size=crop) if args.val_data else None
    if procs.main:
        for folder in (data, val):
            if folder is not None and folder.skipped:
                print(folder.report(), file=sys.stderr)
        print(f"{len(data)} training images" + (f", {len(val)} validation images" if val else ""), file=sys.stderr)
    return data, val


def _resumed_model(args):
    """The network saved in OUT/last.pt when resuming (its configuration wins over the options), else None."""
    path = Path(args.out) / "last.pt"
    if not (args.resume and path.exists()):
        return None
    return build_model(read_state(path)["model"])


def _run(args, build, finish=None) -> int:
    from ..cli_common import UsageError
    try:
        procs = start_processes(args.device)
        torch.manual_seed(args.seed)
        task, cfg = build(args, procs)
        result = fit(task, cfg, procs)
        if procs.main:
            if finish is not None:
                finish(task, cfg)
            print("done: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()) + f"; outputs in {cfg.out}",
                  file=sys.stderr)
        return 0
    except (TrainError, DatasetError, CheckpointError) as err:
        raise UsageError(str(err)) from None
    finally:
        stop_processes()


def cmd_train_denoiser(args) -> int:
    from ..models import MIRNet
    from .denoiser import DenoiserTask

    def build(args, procs):
        cfg = _config(args)
        model = _resumed_model(args) or MIRNet(in_channels=4, out_channels=3, n_feat=args.n_feat, n_rrg=args.n_rrg,
                                               n_msrb=args.n_msrb, height=args.height, width=args.width)
        data, val = _folders(args, procs, args.crop)
        sigmas = [float(s) for s in args.val_sigmas.split(",") if s.strip()]
        return DenoiserTask(model, data, args.crop, args.seed, args.sigma_max / 255, val, val_sigmas=sigmas,
                            sigma_min=args.sigma_min / 255, loss=args.loss), cfg
    return _run(args, build)


def load_network(path: Path, part: str, arch: str | None) -> torch.nn.Module:
    """A frozen network from a dpir_fast model record, a pipeline file (its ``part``), or official weights
    loaded into ``dpir_fast.models.<arch>()``."""
    from .. import models
    if not Path(path).is_file():
        raise TrainError(f"{part} checkpoint {path} does not exist")
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and isinstance(obj.get(part), dict) and "arch" in obj[part]:
        return build_model(obj[part])
    if isinstance(obj, dict) and "arch" in obj and "config" in obj:
        return build_model(obj)
    factory = getattr(models, arch or "", None)
    if factory is None:
        raise TrainError(f"{path} holds plain weights; name their architecture (a factory in dpir_fast.models, "
                         f"got {arch!r})")
    model = factory()
    return models.load_bsrt_checkpoint(model, obj) if isinstance(model, models.BSRT) else load_checkpoint(model, obj)


def cmd_train_fusion(args) -> int:
    from ..models import FusionNet
    from .fusion import FusionTask

    def build(args, procs):
        cfg = _config(args)
        multiple = {"sr4x": 4, "burst": 8}.get(args.task, 1)
        if args.crop % multiple:
            raise TrainError(f"--crop must be a multiple of {multiple} for {args.task}, got {args.crop}")
        ir = load_network(args.ir_checkpoint, "ir", args.ir_arch or DEFAULT_IR[args.task])
        denoiser = load_network(args.denoiser_checkpoint, "denoiser", "mirnet_s")
        fusion = _resumed_model(args) or FusionNet(n_feat=args.n_feat, growth=args.growth)
        data, val = _folders(args, procs, args.crop)
        task = FusionTask(args.task, fusion, ir, denoiser, data, args.crop, args.seed, args.t_max, args.pool, val=val,
                          ir_anchor=args.ir_anchor)
        return task, cfg

    def finish(task, cfg):
        from ..pipeline import DPIR
        fusion = build_model(torch.load(Path(cfg.out) / "model.pt", map_location="cpu", weights_only=True))
        path = save_checkpoint(DPIR.preset(args.task, task.ir.cpu(), task.denoiser.cpu(), fusion),
                               Path(cfg.out) / "pipeline.pt")
        print(f"pipeline for dpir-fast restore: {path}", file=sys.stderr)
    return _run(args, build, finish)
