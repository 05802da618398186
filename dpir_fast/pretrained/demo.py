"""``dpir-fast demo``: super-resolve the bundled sample (or a given low-resolution image) ×4 with the shipped
demo-sr4x weights and write input, IR-only and DP-IR results (and the ground truth, for the sample) side by
side in one PNG."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.degrade import bicubic_downsample, imresize
from ..data.images import read_image
from ..metrics import psnr
from . import SAMPLE_IMAGE

GAP, LABEL = 4, 14  # pixels between panels, height of the label strip


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


def run_demo(output: Path, image: Path | None = None, seed: int = 0, device: str = "cpu", paper: bool = False,
             log=print) -> Path:
    """Restore ``image`` (a low-resolution photo) or the bundled sample with DPIR.from_pretrained("demo-sr4x")
    (its shipped sampler, or the paper's sr4x preset when ``paper``) and write the comparison PNG to ``output``;
    returns its path."""
    from ..pipeline import DPIR, PRESETS
    pipe = DPIR.from_pretrained("demo-sr4x", device=device)
    if paper:
        pipe.configure(**PRESETS["sr4x"])
    target = None
    if image is None:
        target = read_image(SAMPLE_IMAGE)[0]
        y = bicubic_downsample(target, 4)
        log(f"sample: {SAMPLE_IMAGE.name} {target.shape[-1]}x{target.shape[-2]}, bicubic x4 down to "
            f"{y.shape[-1]}x{y.shape[-2]}")
    else:
        y = read_image(image)[0]
    y = y.to(device)
    started = time.perf_counter()
    x_ir = pipe.restore_ir(y)
    x = pipe(y, seed=seed)
    log(f"DP-IR x4: tau {pipe.tau}, {pipe.settings['tail']} tail, NFE {pipe.nfe}, "
        f"{time.perf_counter() - started:.1f} s on {device}")
    panels = [("input (nearest x4)", y), ("IR net only", x_ir), ("DP-IR", x)]
    if target is not None:
        panels.append(("ground truth", target))
        estimates = (("bicubic", imresize(y.cpu(), 4)), ("IR net", x_ir), ("DP-IR", x))
        scores = {name: float(psnr(est.cpu().clamp(0, 1), target)) for name, est in estimates}
        log("PSNR vs ground truth: " + ", ".join(f"{k} {v:.2f} dB" for k, v in scores.items()))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    side_by_side([(label, t.cpu()) for label, t in panels]).save(output)
    log(f"wrote {output}")
    return output


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="super-resolve a bundled sample with the shipped demo weights",
                       description="Super-resolve (x4) the bundled sample photo, or --input IMAGE, with the "
                                   "demo-sr4x weights shipped in the package; write input | IR-only | DP-IR "
                                   "(| ground truth) side by side in one PNG.")
    p.add_argument("-o", "--output", type=Path, default=Path("demo.png"), metavar="PNG",
                   help="comparison image to write (default demo.png)")
    p.add_argument("--input", type=Path, metavar="IMAGE", help="a low-resolution image instead of the sample")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--paper", action="store_true",
                   help="the paper's sr4x sampler (tau 250, 50 DDIM steps, NFE 51) instead of the shipped one "
                        "(tau 5, NFE 6; see MODEL_CARD.md)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import sys

    from ..cli import UsageError, _device
    from ..data.images import ImageReadError
    try:
        run_demo(args.output, args.input, args.seed, _device(args.device), args.paper,
                 log=lambda m: print(m, file=sys.stderr))
    except (ImageReadError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    return 0
