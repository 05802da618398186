"""Training the task-agnostic Gaussian denoiser (MIRNet-S by default), the paper's recipe as defaults.

x̃ = x0 + σ̃·ε with σ̃ drawn per sample uniformly in [σ_min, σ_max] (σ_max = 244.3/255, the level of t = 250;
σ_min = 0), the denoiser sees [x̃, σ̃] [B, 4, H, W] (the layout ``denoiser_input_ref`` gives at sampling time)
and is trained with the MSE to x0 (``loss="x0"``). That loss is dominated by the largest σ̃: its error grows as σ̃².
``loss="eps"`` weighs each sample by 1/σ̃² instead (the MSE of the noise the output implies, (x̃ − D)/σ̃, to ε),
so every level counts alike: for pipelines run at small τ, whose steps see only the lowest levels (σ_min > 0).
Validation: PSNR on held-out centre crops at fixed σ values, fixed noise.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.datasets import CropStream, ImageFolder, center_crops
from ..metrics import psnr
from .common import StepRandom

SIGMA_MAX = 244.3 / 255
VAL_SIGMAS = (15, 25, 50)  # on the 0-255 scale
LOSSES = ("x0", "eps")


def noisy_input(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """[x0 + σ·ε, σ] [B, C + 1, H, W] from x0 [B, C, H, W], σ [B] and ε like x0."""
    level = sigma.to(x0.dtype)[:, None, None, None]
    return torch.cat([x0 + level * eps, level.expand(-1, 1, *x0.shape[-2:])], 1)


class DenoiserTask:
    """The denoiser's training task for :func:`~dpir_fast.train.loop.fit`."""

    name = "denoiser"

    def __init__(self, model: nn.Module, data: ImageFolder, crop: int, seed: int = 0,
                 sigma_max: float = SIGMA_MAX, val: ImageFolder | None = None, val_crop: int | None = None,
                 val_sigmas=VAL_SIGMAS, val_images: int = 16, sigma_min: float = 0.0, loss: str = "x0"):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not 0 <= sigma_min < sigma_max or (loss == "eps" and sigma_min == 0):
            raise ValueError(f"need 0 <= sigma_min < sigma_max (and sigma_min > 0 for loss 'eps': its weight is "
                             f"1/sigma^2), got sigma_min {sigma_min}, sigma_max {sigma_max}")
        self.model, self.sigma_min, self.sigma_max, self.loss_kind = model, float(sigma_min), float(sigma_max), loss
        self.dataset = CropStream(data, crop, seed)
        self.val_sigmas = tuple(float(s) for s in val_sigmas) if val is not None else ()
        self.val_columns = tuple(f"val_psnr_s{s:g}" for s in self.val_sigmas)
        if val is not None:
            self.val_x0 = center_crops(val, val_crop or crop, val_images)
            g = torch.Generator().manual_seed(1234)
            self.val_eps = torch.randn(self.val_x0.shape, generator=g)

    def loss(self, net: nn.Module, ids: torch.Tensor, x0: torch.Tensor, rnd: StepRandom) -> torch.Tensor:
        sigma = self.sigma_min + rnd.rand() * (self.sigma_max - self.sigma_min)
        eps = rnd.randn(*x0.shape[1:])
        out = net(noisy_input(x0, sigma, eps)).float()
        if self.loss_kind == "x0":
            return F.mse_loss(out, x0)
        return ((out - x0) ** 2 / sigma[:, None, None, None] ** 2).mean()

    def validate(self, model: nn.Module, batch: int = 4) -> dict[str, float]:
        device = next(model.parameters()).device
        out = {}
        for s, column in zip(self.val_sigmas, self.val_columns):
            scores = []
            for i in range(0, len(self.val_x0), batch):
                x0, eps = self.val_x0[i:i + batch].to(device), self.val_eps[i:i + batch].to(device)
                sigma = torch.full((x0.shape[0],), s / 255, device=device)
                scores.append(psnr(model(noisy_input(x0, sigma, eps)).float().clamp(0, 1), x0))
            out[column] = float(torch.cat(scores).mean())
        return out

    def record(self) -> dict:
        return {"crop": self.dataset.size, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "loss": self.loss_kind, "val_sigmas": list(self.val_sigmas)}
