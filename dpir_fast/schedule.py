"""Noise schedule of the diffusion and the coefficients every sampler step needs.

Conventions (DESIGN.md §2): timesteps are 1-based, ``alpha_bar[0] = 1`` and
``alpha_bar[t] = prod_{s=1..t} (1 - beta[s])``. Tables are float64 numpy arrays on the host;
a step casts the few scalars it needs when it runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VARIANCES = ("beta", "posterior")


@dataclass(frozen=True)
class Schedule:
    """A discrete DDPM schedule with tables indexed 0..T (index 0 is the clean image).

    Build it with :meth:`linear` (the paper's) or :meth:`from_betas` (any user schedule).
    ``variance`` chooses the reverse-step variance: ``"beta"`` (σ_t² = β_t, the paper's
    experiments) or ``"posterior"`` (σ_t² = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t)).
    """

    beta: np.ndarray
    variance: str = "beta"

    def __post_init__(self) -> None:
        beta = np.asarray(self.beta, dtype=np.float64)
        if beta.ndim != 1 or beta.size < 2 or beta[0] != 0.0:
            raise ValueError("Schedule.beta must be a 1-D table [0, β_1, ..., β_T] with beta[0] = 0; "
                             "use Schedule.from_betas([β_1, ..., β_T]) to build one from the T betas")
        if not np.all((beta[1:] > 0) & (beta[1:] < 1)):
            raise ValueError("every β_t must lie in (0, 1)")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")
        beta.setflags(write=False)
        object.__setattr__(self, "beta", beta)
        alpha = 1.0 - beta
        alpha_bar = np.cumprod(alpha)
        alpha.setflags(write=False)
        alpha_bar.setflags(write=False)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "alpha_bar", alpha_bar)

    # 1. Construction --------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2,
               variance: str = "beta") -> "Schedule":
        """The DDPM linear schedule: β_1..β_T evenly spaced from ``beta_start`` to ``beta_end``."""
        if int(T) < 1:
            raise ValueError(f"T must be a positive number of steps, got {T}")
        return cls.from_betas(np.linspace(beta_start, beta_end, int(T), dtype=np.float64), variance)

    @classmethod
    def from_betas(cls, betas, variance: str = "beta") -> "Schedule":
        """A schedule from the T values β_1..β_T (any sequence of floats in (0, 1))."""
        betas = np.asarray(betas, dtype=np.float64).reshape(-1)
        return cls(np.concatenate([[0.0], betas]), variance)

    @property
    def T(self) -> int:
        return self.beta.size - 1

    def config(self) -> dict:
        """A JSON-friendly record that :meth:`from_config` turns back into this schedule."""
        return {"betas": self.beta[1:].tolist(), "variance": self.variance}

    @classmethod
    def from_config(cls, config: dict) -> "Schedule":
        return cls.from_betas(config["betas"], config.get("variance", "beta"))

    def _check_t(self, t: int, lowest: int = 1) -> int:
        t = int(t)
        if not lowest <= t <= self.T:
            raise ValueError(f"timestep {t} is outside [{lowest}, {self.T}]")
        return t

    # 2. Per-timestep quantities ---------------------------------------------------------------
    def sigma_tilde(self, t: int) -> float:
        """σ̃_t = sqrt((1 − ᾱ_t)/ᾱ_t): the noise level of x̃_t = x_t / sqrt(ᾱ_t) around x0."""
        ab = self.alpha_bar[self._check_t(t, 0)]
        return math.sqrt((1.0 - ab) / ab)

    def reverse_variance(self, t: int) -> float:
        """σ_t² of the reverse step t → t−1."""
        t = self._check_t(t)
        if self.variance == "beta":
            return float(self.beta[t])
        ab = self.alpha_bar
        return float(self.beta[t] * (1.0 - ab[t - 1]) / (1.0 - ab[t]))

    def step_coefficients(self, t: int) -> tuple[float, float, float]:
        """(γ_t, c_t, σ_t) of one ancestral step ``x_{t−1} = γ_t·x0̂ + c_t·x_t + σ_t·z``."""
        t = self._check_t(t)
        ab = self.alpha_bar
        gamma = math.sqrt(ab[t - 1]) * self.beta[t] / (1.0 - ab[t])
        c = math.sqrt(self.alpha[t]) * (1.0 - ab[t - 1]) / (1.0 - ab[t])
        return float(gamma), float(c), math.sqrt(self.reverse_variance(t))

    # 3. The jump over k steps (Lemma 3.2, eq. 8-11) -------------------------------------------
    def _gamma_products(self, j: int, i: np.ndarray) -> np.ndarray:
        """Γ^j_i = sqrt(∏_{n=j}^{i} α_n)·(1 − ᾱ_{j−1})/(1 − ᾱ_i) for i ≥ j, and 1 for i < j."""
        ab = self.alpha_bar
        taken = i >= j
        prod = ab[np.where(taken, i, j - 1)] / ab[j - 1]
        out = np.sqrt(prod) * (1.0 - ab[j - 1]) / np.where(taken, 1.0 - ab[i], 1.0)
        return np.where(taken, out, 1.0)

    def jump_coefficients(self, t: int, k: int) -> tuple[float, float, float]:
        """(A, B, S) with ``x_{t−k} = A·x0 + B·x_t + S·z`` the law of k ancestral steps from t, x0 fixed.

        From the closed forms of Lemma 3.2: with j = t − k + 1,
        A = Σ_{i<k} Γ^j_{t−i−1} γ_{t−i},  B = Γ^j_t,  S² = Σ_{i<k} (Γ^j_{t−i−1})² σ²_{t−i}.
        """
        t = self._check_t(t)
        k = int(k)
        if not 0 <= k <= t:
            raise ValueError(f"a jump from t={t} takes 0..{t} steps, got k={k}")
        if k == 0:
            return 0.0, 1.0, 0.0
        j = t - k + 1
        steps = t - np.arange(k)                       # t, t−1, ..., j: the steps taken
        ab = self.alpha_bar
        gamma = np.sqrt(ab[steps - 1]) * self.beta[steps] / (1.0 - ab[steps])
        if self.variance == "beta":
            var = self.beta[steps]
        else:
            var = self.beta[steps] * (1.0 - ab[steps - 1]) / (1.0 - ab[steps])
        g = self._gamma_products(j, steps - 1)         # Γ^j_{t−i−1}
        A = float(np.sum(g * gamma))
        B = float(self._gamma_products(j, np.array([t]))[0])
        S = math.sqrt(float(np.sum(g * g * var)))
        return A, B, S

    # 4. DDIM ----------------------------------------------------------------------------------
    def ddim_coefficients(self, t: int, s: int, eta: float = 0.0) -> tuple[float, float, float]:
        """(a, b, σ) of the DDIM step t → s < t written on x0̂ and x_t: ``x_s = a·x0̂ + b·x_t + σ·z``.

        From ε̂ = (x_t − sqrt(ᾱ_t)x0̂)/sqrt(1 − ᾱ_t) and x_s = sqrt(ᾱ_s)x0̂ + sqrt(1 − ᾱ_s − σ²)ε̂ + σz,
        σ = η·sqrt((1 − ᾱ_s)/(1 − ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_s).
        """
        t = self._check_t(t)
        s = self._check_t(s, 0)
        if s >= t:
            raise ValueError(f"a DDIM step goes to an earlier timestep, got {t} -> {s}")
        ab_t, ab_s = self.alpha_bar[t], self.alpha_bar[s]
        sigma = eta * math.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
        dir_scale = math.sqrt(max(1.0 - ab_s - sigma * sigma, 0.0)) / math.sqrt(1.0 - ab_t)
        return float(math.sqrt(ab_s) - dir_scale * math.sqrt(ab_t)), float(dir_scale), float(sigma)

    def forward_coefficients(self, t: int) -> tuple[float, float]:
        """(sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) of q(x_t | x0): the SDEdit/CCDF start."""
        ab = self.alpha_bar[self._check_t(t)]
        return math.sqrt(ab), math.sqrt(1.0 - ab)


def ddim_timesteps(tau: int, steps: int) -> list[int]:
    """The ``steps`` timesteps a DDIM tail visits from τ down, evenly strided, ending above 0.

    τ = 250, 50 steps → [250, 245, ..., 5]; each step goes to the next entry, the last one to 0.
    """
    tau, steps = int(tau), int(steps)
    if not 1 <= steps <= tau:
        raise ValueError(f"a DDIM tail from τ={tau} takes 1..{tau} steps, got {steps}")
    return [(tau * n) // steps for n in range(steps, 0, -1)]
