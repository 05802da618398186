"""Reference DP-IR samplers in plain PyTorch: the test oracle and the fallback of the fast path.

The sampler ops (``jump_ref``, ``ancestral_step_ref``, ``ddim_step_ref``, ``denoiser_input_ref``)
take the schedule and timesteps and compute their scalar coefficients (a :class:`SamplerUpdate`) in
float64 on the host; all sampler arithmetic runs in float32 whatever the networks' dtype (float64
inputs stay float64: that is the oracle of the tolerance rule). Noise comes from
:mod:`.noise`, keyed by (seed, step, global pixel), so ``full_size``/``origin`` place a tile in
its image and the tile draws the image's noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..schedule import Schedule, ddim_timesteps
from .noise import START_STEP, draw_noise

STARTS = ("jump", "forward")
TAILS = ("ancestral", "ddim")


@dataclass(frozen=True)
class SamplerUpdate:
    """One sampler update ``x_next = a·x0̂ + b·x_t + σ·z`` (z on noise stream ``stream``) and the
    denoiser input at the timestep it reaches: x̃ = den_scale·x_next, σ̃ = den_level.

    Scalars come from the float64 schedule; kernels receive them as float32 arguments.
    """

    a: float
    b: float
    sigma: float
    stream: int
    den_scale: float = 1.0
    den_level: float = 0.0

    @classmethod
    def reaching(cls, schedule: Schedule, t_next: int, a: float, b: float, sigma: float,
                 stream: int) -> "SamplerUpdate":
        return cls(float(a), float(b), float(sigma), int(stream), schedule.alpha_bar[int(t_next)] ** -0.5,
                   schedule.sigma_tilde(t_next))


def jump_update(schedule: Schedule, tau: int, start: str = "jump") -> SamplerUpdate:
    """x_T → x_τ: ``"jump"`` a = A, σ = sqrt(B² + S²) (eq. 11); ``"forward"`` sqrt(ᾱ_τ), sqrt(1 − ᾱ_τ)."""
    if start == "jump":
        A, B, S = schedule.jump_coefficients(schedule.T, schedule.T - tau)
        a, sigma = A, (B * B + S * S) ** 0.5
    elif start == "forward":
        a, sigma = schedule.forward_coefficients(tau)
    else:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    return SamplerUpdate.reaching(schedule, tau, a, 0.0, sigma, START_STEP)


def ancestral_update(schedule: Schedule, t: int) -> SamplerUpdate:
    """t → t − 1: (γ_t, c_t, σ_t) on stream t; the last step (t = 1) is x0̂ itself."""
    if int(t) == 1:
        return SamplerUpdate.reaching(schedule, 0, 1.0, 0.0, 0.0, 1)
    return SamplerUpdate.reaching(schedule, int(t) - 1, *schedule.step_coefficients(t), int(t))


def ddim_update(schedule: Schedule, t: int, s: int, eta: float = 0.0) -> SamplerUpdate:
    """t → s < t (DDIM, x0-prediction) on stream t."""
    return SamplerUpdate.reaching(schedule, s, *schedule.ddim_coefficients(t, s, eta), int(t))


def _denoiser_input(x: torch.Tensor, scale: float, level: float, dtype, channels_last: bool) -> torch.Tensor:
    level_map = torch.full_like(x[:, :1], level)
    out = torch.cat([x * scale, level_map], 1).to(dtype or x.dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def sampler_update_ref(x0_hat: torch.Tensor, x_t: torch.Tensor | None, update: SamplerUpdate,
                       seeds: Sequence[int], full_size=None, origin=(0, 0), den_dtype: torch.dtype | None = None,
                       den_channels_last: bool = False):
    """x_next [B, C, H, W] (float32; float64 for float64 inputs) = a·x0̂ + b·x_t + σ·z, z drawn when σ > 0.

    With ``den_dtype`` also the next denoiser input [B, C + 1, H, W] in that dtype (channels_last if
    asked): returns (x_next, den_input).
    """
    dtype = torch.float64 if x0_hat.dtype == torch.float64 else torch.float32
    out = update.a * x0_hat.to(dtype)
    if x_t is not None and update.b != 0:
        out = out + update.b * x_t.to(dtype)
    if update.sigma > 0:
        out = out + update.sigma * draw_noise(seeds, update.stream, x0_hat.shape, full_size, origin,
                                              x0_hat.device).to(dtype)
    if den_dtype is None:
        return out
    return out, _denoiser_input(out, update.den_scale, update.den_level, den_dtype, den_channels_last)


def jump_ref(x_ir: torch.Tensor, schedule: Schedule, tau: int, seeds: Sequence[int],
             start: str = "jump", full_size=None, origin=(0, 0), den_dtype=None, den_channels_last=False):
    """x_τ [B, C, H, W] from the IR estimate x_IR [B, C, H, W], skipping the chain above τ.

    ``"jump"`` (eq. 11): x_τ = A·x_IR + sqrt(B² + S²)·ε, the exact law of T − τ ancestral steps from
    x_T ~ N(0, I) with x0 = x_IR. ``"forward"`` (SDEdit/CCDF): x_τ = sqrt(ᾱ_τ)·x_IR + sqrt(1 − ᾱ_τ)·ε.
    ``den_dtype``: also return the denoiser input at τ, as in :func:`sampler_update_ref`.
    """
    return sampler_update_ref(x_ir, None, jump_update(schedule, tau, start), seeds, full_size, origin,
                              den_dtype, den_channels_last)


def ancestral_step_ref(x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, schedule: Schedule,
                       seeds: Sequence[int], full_size=None, origin=(0, 0), den_dtype=None,
                       den_channels_last=False):
    """x_{t−1} = γ_t·x0̂ + c_t·x_t + σ_t·z (noise drawn on stream t); at t = 1 it is x0̂ itself."""
    return sampler_update_ref(x0_hat, x_t, ancestral_update(schedule, t), seeds, full_size, origin,
                              den_dtype, den_channels_last)


def ddim_step_ref(x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, s: int, schedule: Schedule,
                  seeds: Sequence[int], eta: float = 0.0, full_size=None, origin=(0, 0), den_dtype=None,
                  den_channels_last=False):
    """x_s = sqrt(ᾱ_s)x0̂ + sqrt(1 − ᾱ_s − σ²)ε̂ + σz for s < t, ε̂ implied by (x_t, x0̂); stream t."""
    return sampler_update_ref(x0_hat, x_t, ddim_update(schedule, t, s, eta), seeds, full_size, origin,
                              den_dtype, den_channels_last)


def denoiser_input_ref(x_t: torch.Tensor, t: int, schedule: Schedule,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """[x̃_t, σ̃_t] [B, C + 1, H, W]: x̃_t = x_t / sqrt(ᾱ_t) and a constant map of σ̃_t."""
    scale = schedule.alpha_bar[int(t)] ** -0.5
    return _denoiser_input(x_t.to(torch.float32), scale, schedule.sigma_tilde(t), dtype or x_t.dtype, False)


def sample_timesteps(tau: int, tail: str, tail_steps: int | None) -> list[int]:
    """The timesteps at which denoiser + fusion run, from τ down (their count is NFE − 1)."""
    if tail == "ancestral":
        return list(range(int(tau), 0, -1))
    if tail == "ddim":
        return ddim_timesteps(tau, tail_steps if tail_steps is not None else tau)
    raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")


def dpir_sample_ref(x_ir: torch.Tensor, denoise: Callable[[torch.Tensor], torch.Tensor],
                    fuse: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], schedule: Schedule,
                    tau: int, seeds: Sequence[int], tail: str = "ancestral", tail_steps: int | None = None,
                    start: str = "jump", eta: float = 0.0, full_size=None, origin=(0, 0)) -> torch.Tensor:
    """DP-IR's accelerated sampler: x0̂ [B, C, H, W] from the IR estimate x_IR [B, C, H, W].

    1. start at τ (jump or forward), 2. at each t of the tail: x0̂ = fuse(x_IR, denoise([x̃_t, σ̃_t]), t),
    3. step to the next timestep (ancestral t → t − 1, or DDIM t → next), the last step returning x0̂.
    ``tau = schedule.T`` with ``start="jump"`` is the unaccelerated chain from x_T ~ N(0, I).
    """
    if not 1 <= int(tau) <= schedule.T:
        raise ValueError(f"tau must lie in [1, {schedule.T}], got {tau}")
    timesteps = sample_timesteps(tau, tail, tail_steps)
    x_t = jump_ref(x_ir, schedule, tau, seeds, start, full_size, origin)
    for i, t in enumerate(timesteps):
        x0_hat = fuse(x_ir, denoise(denoiser_input_ref(x_t, t, schedule)), t)
        if tail == "ancestral":
            x_t = ancestral_step_ref(x0_hat, x_t, t, schedule, seeds, full_size, origin)
        else:
            s = timesteps[i + 1] if i + 1 < len(timesteps) else 0
            x_t = ddim_step_ref(x0_hat, x_t, t, s, schedule, seeds, eta, full_size, origin)
    return x_t
