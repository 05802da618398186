"""Supervised training of an IR network on a task's synthetic degradation (the demos' CompactSR ×4 and CompactUNet).

DP-IR takes the IR net as given (public weights); this trainer exists so that the shipped demo can be
reproduced from scratch: y = degrade(x0), loss = L1(IR(y), x0) (SwinIR's recipe), or for a fine-tuning phase the
MSE or minus the crops' mean PSNR (``loss="psnr"``, :func:`~dpir_fast.train.common.psnr_loss`).

``grain`` > 0 adds film grain to the clean crops first: x0 ← clip(x0 + σ·ε), σ ~ U[0, grain] per crop, so that
both the target and its degradation carry it. Grain is unpredictable from a degraded image: the net learns to
leave it soft instead of sharpening it into detail (clean training images teach the opposite).

``defocus`` > 0 blurs the clean crops first by a Gaussian of σ ~ U[0, defocus] pixels per crop (target and
degradation alike): photos have soft, out-of-focus areas that a net trained on crisp images sharpens into edges
that were never there.

``chroma`` > 0 gives that fraction of the clean crops JPEG's 4:2:0 colour, after grain and defocus
(:func:`~dpir_fast.data.degrade.subsample_chroma`): most photos are JPEGs whose colour is stored at half
resolution, and a net trained on crisp renders adds colour detail to them that was never there (the luma is left
alone).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.blur import blur, gaussian_kernel
from ..data.datasets import CropStream, ImageFolder, center_crops
from ..data.degrade import subsample_chroma
from ..metrics import psnr
from .common import StepRandom, psnr_loss
from .fusion import degrade_image, ir_forward

LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "psnr": psnr_loss}


class IRTask:
    """An IR network's training task (sr4x or deblur) for :func:`~dpir_fast.train.loop.fit`."""

    name = "ir"

    def __init__(self, task: str, model: nn.Module, data: ImageFolder, crop: int, seed: int = 0,
                 val: ImageFolder | None = None, val_images: int = 8, loss: str = "l1", grain: float = 0.0,
                 defocus: float = 0.0, chroma: float = 0.0):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if not 0.0 <= grain < 1.0:
            raise ValueError(f"grain is a noise level in [0, 1), got {grain}")
        if not 0.0 <= defocus <= 8.0:
            raise ValueError(f"defocus is a Gaussian blur's largest σ in pixels, in [0, 8], got {defocus}")
        if not 0.0 <= chroma <= 1.0:
            raise ValueError(f"chroma is the fraction of crops with subsampled colour, in [0, 1], got {chroma}")
        self.defocus, self.chroma = float(defocus), float(chroma)
        self.task, self.model, self.seed, self.loss_name, self.grain = task, model, int(seed), loss, float(grain)
        self.dataset = CropStream(data, crop, seed)
        self.val_columns = ("val_psnr",) if val is not None else ()
        if val is not None:
            self.val_x0 = center_crops(val, crop, val_images)
            self.val_ids = torch.arange(len(self.val_x0)) + 2**40

    def loss(self, net: nn.Module, ids: torch.Tensor, x0: torch.Tensor, rnd: StepRandom) -> torch.Tensor:
        with torch.no_grad():
            if self.grain:
                sigma = (rnd.rand() * self.grain).to(x0.dtype)[:, None, None, None]
                x0 = (x0 + sigma * rnd.randn(*x0.shape[1:]).to(x0)).clamp(0, 1)
            if self.defocus:
                size = 2 * math.ceil(3 * self.defocus) + 1
                sigmas = (rnd.rand() * self.defocus).tolist()
                x0 = blur(x0, torch.stack([gaussian_kernel(size, s) for s in sigmas]))
            if self.chroma:
                chosen = (rnd.rand() < self.chroma).to(x0.device)[:, None, None, None]
                x0 = torch.where(chosen, subsample_chroma(x0), x0)
            y = degrade_image(self.task, x0, ids, self.seed)
        return LOSSES[self.loss_name](ir_forward(net, y), x0)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        x0 = self.val_x0.to(next(model.parameters()).device)
        out = ir_forward(model, degrade_image(self.task, x0, self.val_ids, self.seed)).clamp(0, 1)
        return {"val_psnr": float(psnr(out, x0).mean())}

    def record(self) -> dict:
        return {"task": self.task, "crop": self.dataset.size, "loss": self.loss_name, "grain": self.grain,
                "defocus": self.defocus, "chroma": self.chroma}
