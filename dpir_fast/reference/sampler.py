"""Reference DP-IR samplers in plain PyTorch: the test oracle and the fallback of the fast path.

The sampler ops (``jump_ref``, ``ancestral_step_ref``, ``ddim_step_ref``, ``denoiser_input_ref``)
take the schedule and timesteps and compute their scalar coefficients in float64 on the host; all
sampler arithmetic runs in float32 whatever the networks' dtype. Noise comes from
:mod:`.noise`, keyed by (seed, step, global pixel), so ``full_size``/``origin`` place a tile in
its image and the tile draws the image's noise.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..schedule import Schedule, ddim_timesteps
from .noise import START_STEP, draw_noise

STARTS = ("jump", "forward")
TAILS = ("ancestral", "ddim")


def _affine(x0: torch.Tensor, xt: torch.Tensor | None, a: float, b: float, sigma: float,
            seeds: Sequence[int], step: int, full_size, origin) -> torch.Tensor:
    """a·x0 + b·x_t + σ·z in float32; z is drawn only when σ > 0."""
    out = a * x0.to(torch.float32)
    if xt is not None:
        out = out + b * xt.to(torch.float32)
    if sigma > 0:
        out = out + sigma * draw_noise(seeds, step, x0.shape, full_size, origin, x0.device)
    return out


def jump_ref(x_ir: torch.Tensor, schedule: Schedule, tau: int, seeds: Sequence[int],
             start: str = "jump", full_size=None, origin=(0, 0)) -> torch.Tensor:
    """x_τ [B, C, H, W] from the IR estimate x_IR [B, C, H, W], skipping the chain above τ.

    ``"jump"`` (eq. 11): x_τ = A·x_IR + sqrt(B² + S²)·ε, the exact law of T − τ ancestral steps from
    x_T ~ N(0, I) with x0 = x_IR. ``"forward"`` (SDEdit/CCDF): x_τ = sqrt(ᾱ_τ)·x_IR + sqrt(1 − ᾱ_τ)·ε.
    """
    if start == "jump":
        A, B, S = schedule.jump_coefficients(schedule.T, schedule.T - tau)
        a, sigma = A, (B * B + S * S) ** 0.5
    elif start == "forward":
        a, sigma = schedule.forward_coefficients(tau)
    else:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    return _affine(x_ir, None, a, 0.0, sigma, seeds, START_STEP, full_size, origin)


def ancestral_step_ref(x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, schedule: Schedule,
                       seeds: Sequence[int], full_size=None, origin=(0, 0)) -> torch.Tensor:
    """x_{t−1} = γ_t·x0̂ + c_t·x_t + σ_t·z (noise drawn on stream t); at t = 1 it is x0̂ itself."""
    if int(t) == 1:
        return x0_hat.to(torch.float32)
    gamma, c, sigma = schedule.step_coefficients(t)
    return _affine(x0_hat, x_t, gamma, c, sigma, seeds, t, full_size, origin)


def ddim_step_ref(x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, s: int, schedule: Schedule,
                  seeds: Sequence[int], eta: float = 0.0, full_size=None, origin=(0, 0)) -> torch.Tensor:
    """x_s = sqrt(ᾱ_s)x0̂ + sqrt(1 − ᾱ_s − σ²)ε̂ + σz for s < t, ε̂ implied by (x_t, x0̂); stream t."""
    a, b, sigma = schedule.ddim_coefficients(t, s, eta)
    return _affine(x0_hat, x_t, a, b, sigma, seeds, t, full_size, origin)


def denoiser_input_ref(x_t: torch.Tensor, t: int, schedule: Schedule,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """[x̃_t, σ̃_t] [B, C + 1, H, W]: x̃_t = x_t / sqrt(ᾱ_t) and a constant map of σ̃_t."""
    scale = schedule.alpha_bar[int(t)] ** -0.5
    level = torch.full_like(x_t[:, :1], schedule.sigma_tilde(t), dtype=torch.float32)
    return torch.cat([x_t.to(torch.float32) * scale, level], 1).to(dtype or x_t.dtype)


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
