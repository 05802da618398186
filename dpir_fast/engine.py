"""The sampling loop over the fused ops: jump → for each t: denoiser → fused fusion + update → next input.

:class:`Engine` holds what is constant for a list of timesteps (the sampler coefficients, computed in
float64 on the host, and FusionNet's 3CA time weights, computed once for all steps); :meth:`Engine.step`
is one step as a function of (step index, state), the unit a later CUDA-graph capture replays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from . import ops
from .models.fusion import FusionNet
from .reference.sampler import SamplerUpdate, ancestral_update, ddim_update, jump_update, sample_timesteps
from .schedule import Schedule


@dataclass(frozen=True)
class Plan:
    """The timesteps of a sampler run and its updates: ``start`` reaches τ, ``updates[i]`` leaves timesteps[i]."""

    timesteps: tuple[int, ...]
    start: SamplerUpdate
    updates: tuple[SamplerUpdate, ...]

    @classmethod
    def make(cls, schedule: Schedule, tau: int, tail: str = "ancestral", tail_steps: int | None = None,
             start: str = "jump", eta: float = 0.0) -> "Plan":
        if not 1 <= int(tau) <= schedule.T:
            raise ValueError(f"tau must lie in [1, {schedule.T}], got {tau}")
        steps = sample_timesteps(tau, tail, tail_steps)
        if tail == "ancestral":
            updates = [ancestral_update(schedule, t) for t in steps]
        else:
            updates = [ddim_update(schedule, t, s, eta) for t, s in zip(steps, [*steps[1:], 0])]
        return cls(tuple(steps), jump_update(schedule, tau, start), tuple(updates))


class Engine:
    """Runs a :class:`Plan` with ``denoise`` ([x̃, σ̃] [B, C + 1, H, W] → [B, C, H, W]) and ``fusion``.

    ``dtype``: the networks' dtype (None: float32), which is also the denoiser input's dtype;
    ``channels_last``: the denoiser input's memory format. A ``models.FusionNet`` runs fused with the
    update in its last convolution where Triton runs; any other fusion module runs as itself.
    """

    def __init__(self, plan: Plan, denoise: Callable[[torch.Tensor], torch.Tensor], fusion: nn.Module,
                 dtype: torch.dtype | None = None, channels_last: bool = False, backend: str = "auto"):
        self.plan, self.denoise, self.fusion, self.backend = plan, denoise, fusion, backend
        self.dtype, self.den_dtype, self.channels_last = dtype, dtype or torch.float32, channels_last
        self.weights = ops.fusion_time_weights(fusion, plan.timesteps) if isinstance(fusion, FusionNet) else None

    def start(self, x_ir: torch.Tensor, seeds, full_size=None, origin=(0, 0)):
        """(x_τ [B, C, H, W] float32, the denoiser input at τ)."""
        return ops.sampler_update(x_ir, None, self.plan.start, seeds, full_size, origin, self.den_dtype,
                                  self.channels_last, self.backend)

    def step(self, i: int, x_ir: torch.Tensor, x_t: torch.Tensor, den: torch.Tensor, seeds, full_size=None,
             origin=(0, 0)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Step i: (x at the next timestep [B, C, H, W] float32, its denoiser input; None after the last)."""
        last = i == len(self.plan.timesteps) - 1
        t = self.plan.timesteps[i]
        x_den = self.denoise(den)
        if not ops.fuses(self.fusion, x_ir, self.backend):
            x_den = x_den.to(x_ir.dtype)
        weights = self.weights[i:i + 1] if self.weights is not None else None
        out = ops.fusion_step(self.fusion, x_ir, x_den, t, x_t, self.plan.updates[i], seeds, weights, self.dtype,
                              full_size, origin, None if last else self.den_dtype, self.channels_last, self.backend)
        return (out, None) if last else out

    def run(self, x_ir: torch.Tensor, seeds: Sequence[int] | torch.Tensor, full_size=None,
            origin=(0, 0)) -> torch.Tensor:
        """x0̂ [B, C, H, W] float32 from the IR estimate x_IR [B, C, H, W]."""
        seeds = seeds if torch.is_tensor(seeds) else torch.tensor([int(s) for s in seeds], dtype=torch.int64,
                                                                   device=x_ir.device)
        x_t, den = self.start(x_ir, seeds, full_size, origin)
        for i in range(len(self.plan.timesteps)):
            x_t, den = self.step(i, x_ir, x_t, den, seeds, full_size, origin)
        return x_t
