"""Reference of the fused FusionNet ops: ``models.FusionNet`` itself, then the sampler update."""
from __future__ import annotations

from typing import Sequence

import torch

from .sampler import SamplerUpdate, sampler_update_ref


def fusion_ref(net: torch.nn.Module, x_ir: torch.Tensor, x_den: torch.Tensor, t) -> torch.Tensor:
    """x0̂ [B, C, H, W] = net(x_IR, x_den, t): the module is its own reference."""
    return net(x_ir, x_den, t)


def fusion_step_ref(net: torch.nn.Module, x_ir: torch.Tensor, x_den: torch.Tensor, t, x_t: torch.Tensor,
                    update: SamplerUpdate, seeds: Sequence[int], full_size=None, origin=(0, 0),
                    den_dtype: torch.dtype | None = None, den_channels_last: bool = False):
    """x_next = a·net(x_IR, x_den, t) + b·x_t + σ·z (and the next denoiser input): see sampler_update_ref."""
    return sampler_update_ref(fusion_ref(net, x_ir, x_den, t), x_t, update, seeds, full_size, origin, den_dtype,
                              den_channels_last)
