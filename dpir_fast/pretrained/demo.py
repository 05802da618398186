"""``dpir-fast demo``: restore the bundled sample, a user's photo (degraded first, so the result can be scored)
or an already degraded image with the shipped demo weights: ×4 super-resolution (demo-sr4x) or deblurring
(demo-deblur). Writes the input, the baseline (bicubic; for deblurring the blurred input itself), IR-only and DP-IR
results (and the ground truth) side by side in one PNG, with the PSNR of each and the gains over the baseline."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.blur import arc_kernel, blur
from ..data.degrade import bicubic_downsample, imresize
from ..data.images import read_image
from ..metrics import psnr
from . import PRETRAINED, SAMPLE_IMAGE

GAP, LABEL = 4, 14  # pixels between panels, height of the label strip
PHOTO_CROP = 512    # --photo: the centre crop at most this size (a whole photo takes minutes on a CPU)


def side_by_side(panels: list[tuple[str, torch.Tensor]]) -> Image.Image:
    """One RGB image of labelled panels [1, 3, H, W] in [0, 1] placed left to right (smaller ones upscaled
    nearest to the largest height)."""
    height = max(x.shape[-2] for _, x in panels)
    images = []
    for label, x in panels:
        factor = max(1, height // x.shape[-2])
        x = x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        array = (x[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        images.append((label, Image.fromarray(array)))
    width = sum(im.width for _, im in images) + GAP * (len(images) - 1)
    canvas = Image.new("RGB", (width, height + LABEL), "white")
    draw, left = ImageDraw.Draw(canvas), 0
    for label, im in images:
        canvas.paste(im, (left, LABEL))
        draw.text((left + 2, 1), label, fill="black")
        left += im.width + GAP
    return canvas


def output_file(output: str | Path) -> Path:
    """``output`` itself, or ``output``/demo.png when it names a folder (an existing one, or one ending in /)."""
    if Path(output).is_dir() or str(output).endswith(("/", "\\")):
        return Path(output) / "demo.png"
    return Path(output)


# --task: the shipped pipeline, what a photo goes through first, and the baseline it is scored against
TASKS = {"sr4x": dict(weights="demo-sr4x", degraded="reduced x4 (MATLAB bicubic)", baseline="bicubic"),
         "deblur": dict(weights="demo-deblur", degraded="blurred by a 15-px curved camera shake",
                        baseline="blurred")}
SHAKE = dict(length=15.0, size=23, angle=0.4, turn=2.0)   # the demo's blur: an arc_kernel, none of the training's
SHAKE_NOISE = 1 / 255


def degrade(task: str, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """What ``task``'s demo does to a sharp image x [1, 3, H, W] before restoring it: MATLAB bicubic ×1/4, or the
    SHAKE kernel and Gaussian noise of σ SHAKE_NOISE (drawn with ``seed``), clamped to [0, 1]."""
    if task == "sr4x":
        return bicubic_downsample(x, 4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
    return (blur(x, arc_kernel(**SHAKE)) + SHAKE_NOISE * noise).clamp(0.0, 1.0)


def run_demo(output: str | Path, image: Path | None = None, seed: int = 0, device: str = "cpu",
             photo: Path | None = None, task: str = "sr4x", log=print) -> Path:
    """Restore a degraded ``image``, or a ``photo`` (or the bundled sample) degraded by :func:`degrade`, with
    the shipped pipeline of ``task`` (TASKS); write input | baseline | IR net | DP-IR (| ground truth) side by
    side to ``output`` (a PNG, or a folder to hold demo.png) and, with a ground truth, log the PSNR of each and
    the gains over the baseline. Returns the PNG's path."""
    from ..pipeline import DPIR
    spec = TASKS[task]
    pipe = DPIR.from_pretrained(spec["weights"], device=device)
    target = None
    if image is None:
        target = read_image(photo or SAMPLE_IMAGE)[0]
        height, width = target.shape[-2:]
        if min(height, width) < 16:
            raise ValueError(f"{photo} is {width}x{height}: the demo needs a photo of at least 16x16 pixels")
        h, w = (min(s, PHOTO_CROP) // 4 * 4 for s in (height, width))
        top, left = (height - h) // 2, (width - w) // 2
        target = target[..., top:top + h, left:left + w]
        if (h, w) != (height, width):
            log(f"{photo.name}: {width}x{height}, its centre {w}x{h} used")
        y = degrade(task, target, seed)
        log(f"{(photo or SAMPLE_IMAGE).name}: {w}x{h} {spec['degraded']} to {y.shape[-1]}x{y.shape[-2]}")
    else:
        y = read_image(image)[0]
    y = y.to(device)
    started = time.perf_counter()
    x = pipe(y, seed=seed)
    ensemble = pipe.settings["ir_ensemble"]
    log(f"DP-IR {task}: tau {pipe.tau}, {pipe.settings['tail']} tail, "
        + (f"IR net averaged over {ensemble} flips/transpositions, " if ensemble > 1 else "") + f"NFE {pipe.nfe}, "
        f"{time.perf_counter() - started:.1f} s on {device}")
    x_ir = pipe.restore_ir(y)   # the IR net's panel (the pipeline keeps its own estimate internal)
    baseline = imresize(y.cpu(), 4).clamp(0, 1) if task == "sr4x" else y.cpu()
    estimates = [(spec["baseline"], baseline), ("IR net", x_ir.cpu().clamp(0, 1)), ("DP-IR", x.cpu())]
    panels = [("input (nearest x4)", y.cpu()), *estimates] if task == "sr4x" else [*estimates]
    if target is not None:
        panels.append(("ground truth", target))
        scores = {name: float(psnr(est, target)) for name, est in estimates}
        log("PSNR vs ground truth: " + ", ".join(f"{k} {v:.2f} dB" for k, v in scores.items()))
        log(f"gain over {spec['baseline']}: " + ", ".join(f"{k} {scores[k] - scores[spec['baseline']]:+.2f} dB"
                                                         for k in ("IR net", "DP-IR")))
    output = output_file(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(panels).save(output, format="PNG")
    log(f"wrote {output}")
    return output


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="restore a bundled sample with the shipped demo weights",
                       description="Restore the bundled sample photo, your own --photo (degraded first, so the "
                                   "result can be scored) or a degraded --input with the weights shipped in the "
                                   "package: x4 super-resolution (demo-sr4x) or --task deblur (demo-deblur); write "
                                   "input | bicubic or blurred | IR net | DP-IR (| ground truth) side by side in "
                                   "one PNG and print the PSNR of each.")
    shipped = sorted(task for task, spec in TASKS.items() if spec["weights"] in PRETRAINED)
    p.add_argument("--task", choices=shipped, default="sr4x",
                   help="sr4x (default): x4 super-resolution; deblur: camera-shake deblurring (those with weights "
                        f"in this installation: {', '.join(shipped)})")
    p.add_argument("-o", "--output", default="demo.png", metavar="PNG",
                   help="comparison image to write, or a folder to write demo.png into (default demo.png)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--photo", type=Path, metavar="IMAGE",
                        help="your own photo: degraded (reduced x4, or blurred), restored, and scored against itself")
    source.add_argument("--input", type=Path, metavar="IMAGE",
                        help="a degraded image to restore (low-resolution, or blurred; no ground truth, no scores)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import sys

    from ..cli_common import UsageError, resolve_device
    from ..data.images import ImageReadError
    try:
        run_demo(args.output, args.input, args.seed, resolve_device(args.device), args.photo, args.task,
                 log=lambda m: print(m, file=sys.stderr))
    except (ImageReadError, FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    except OSError as err:   # the output cannot be written
        raise UsageError(f"cannot write {output_file(args.output)}: {err.strerror or err}") from None
    return 0
