"""Training the task-agnostic Gaussian denoiser (MIRNet-S by default), the paper's recipe as defaults.

x̃ = x0 + σ̃·ε with σ̃ drawn per sample uniformly in [0, σ_max] (σ_max = 244.3/255, the level of t = 250),
the denoiser sees [x̃, σ̃] [B, 4, H, W] (the layout ``denoiser_input_ref`` gives at sampling time) and is
trained with the MSE to x0. Validation: PSNR on held-out centre crops at fixed σ values, fixed noise.
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


def noisy_input(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """[x0 + σ·ε, σ] [B, C + 1, H, W] from x0 [B, C, H, W], σ [B] and ε like x0."""
    level = sigma.to(x0.dtype)[:, None, None, None]
    return torch.cat([x0 + level * eps, level.expand(-1, 1, *x0.shape[-2:])], 1)


class DenoiserTask:
    """The denoiser's training task for :func:`~dpir_fast.train.loop.fit`."""

    name = "denoiser"

    def __init__(self, model: nn.Module, data: ImageFolder, crop: int, seed: int = 0,
                 sigma_max: float = SIGMA_MAX, val: ImageFolder | None = None, val_crop: int | None = None,
                 val_sigmas=VAL_SIGMAS, val_images: int = 16):
        self.model, self.sigma_max = model, float(sigma_max)
        self.dataset = CropStream(data, crop, seed)
        self.val_sigmas = tuple(float(s) for s in val_sigmas) if val is not None else ()
        self.val_columns = tuple(f"val_psnr_s{s:g}" for s in self.val_sigmas)
        if val is not None:
            self.val_x0 = center_crops(val, val_crop or crop, val_images)
            g = torch.Generator().manual_seed(1234)
            self.val_eps = torch.randn(self.val_x0.shape, generator=g)

    def loss(self, net: nn.Module, ids: torch.Tensor, x0: torch.Tensor, rnd: StepRandom) -> torch.Tensor:
        sigma = rnd.rand() * self.sigma_max
        eps = rnd.randn(*x0.shape[1:])
        return F.mse_loss(net(noisy_input(x0, sigma, eps)).float(), x0)

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
        return {"crop": self.dataset.size, "sigma_max": self.sigma_max, "val_sigmas": list(self.val_sigmas)}
