"""Supervised training of an IR network on a task's synthetic degradation (used for the demo's SwinIR ×4).

DP-IR takes the IR net as given (public weights); this trainer exists so that the shipped demo can be
reproduced from scratch: y = degrade(x0), loss = L1(IR(y), x0) (SwinIR's recipe), or the MSE for a fine-tuning phase.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.datasets import CropStream, ImageFolder, center_crops
from ..metrics import psnr
from .common import StepRandom
from .fusion import degrade_image, ir_forward

LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


class IRTask:
    """An IR network's training task (sr4x or deblur) for :func:`~dpir_fast.train.loop.fit`."""

    name = "ir"

    def __init__(self, task: str, model: nn.Module, data: ImageFolder, crop: int, seed: int = 0,
                 val: ImageFolder | None = None, val_images: int = 8, loss: str = "l1"):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.task, self.model, self.seed, self.loss_name = task, model, int(seed), loss
        self.dataset = CropStream(data, crop, seed)
        self.val_columns = ("val_psnr",) if val is not None else ()
        if val is not None:
            self.val_x0 = center_crops(val, crop, val_images)
            self.val_ids = torch.arange(len(self.val_x0)) + 2**40

    def loss(self, net: nn.Module, ids: torch.Tensor, x0: torch.Tensor, rnd: StepRandom) -> torch.Tensor:
        with torch.no_grad():
            y = degrade_image(self.task, x0, ids, self.seed)
        return LOSSES[self.loss_name](ir_forward(net, y), x0)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        x0 = self.val_x0.to(next(model.parameters()).device)
        out = ir_forward(model, degrade_image(self.task, x0, self.val_ids, self.seed)).clamp(0, 1)
        return {"val_psnr": float(psnr(out, x0).mean())}

    def record(self) -> dict:
        return {"task": self.task, "crop": self.dataset.size, "loss": self.loss_name}
