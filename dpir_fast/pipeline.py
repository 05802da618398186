"""DPIR: the user-facing pipeline (IR net once, jump to τ, τ steps of denoiser + fusion)."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from . import _backend
from .engine import Engine, Plan
from .models._common import crop_to, pad_to_multiple
from .reference.sampler import STARTS, TAILS, dpir_sample_ref, sample_timesteps
from .schedule import Schedule

PRESETS = {
    "sr4x": dict(tau=250, tail="ddim", tail_steps=50),
    "deblur": dict(tau=5, tail="ancestral", tail_steps=None),
    "burst": dict(tau=5, tail="ancestral", tail_steps=None),
}
DTYPES = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_network(net: nn.Module, x: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """net(x) with x reflect-padded to ``net.size_multiple`` and the output cropped back (× scale).

    x is [B, C, H, W], or a burst [B, N, C, H, W] whose frames are padded alike.
    """
    padded, size = pad_to_multiple(x.flatten(1, -3), int(getattr(net, "size_multiple", 1)))
    return crop_to(net(padded.view(*x.shape[:-2], *padded.shape[-2:])), size, scale)


def _seed_list(seed, batch: int) -> list[int]:
    """One seed per image: an int gives seed, seed + 1, ...; a sequence is taken as is."""
    seeds = [int(seed) + b for b in range(batch)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch} images")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise ValueError(f"seeds must be integers in [0, 2**63), got {seeds}")
    return seeds


class DPIR(nn.Module):
    """Modular conditional diffusion for image reconstruction (Zhussip et al., NeurIPS 2024).

    ``out = pipe(y, seed=0)``: y [B, C, h, w] float in [0, 1] → x0̂ [B, 3, h·s, w·s] float32 in
    [0, 1], s the IR net's scale. The IR net runs once; the sampler starts at τ (``start="jump"``:
    the closed-form jump of Lemma 3.2, or ``"forward"``: SDEdit/CCDF) and runs τ ancestral steps
    (``tail="ancestral"``) or ``tail_steps`` DDIM steps (``tail="ddim"``), each one denoiser and one
    fusion evaluation. ``pipe.nfe`` = 1 + that count. The denoiser receives [x̃_t, σ̃_t] as one
    [B, C + 1, h·s, w·s] tensor; the fusion gets (x_IR, x_den, t).
    """

    def __init__(self, ir: nn.Module, denoiser: nn.Module, fusion: nn.Module, schedule: Schedule | None = None,
                 tau: int = 5, tail: str = "ancestral", tail_steps: int | None = None, start: str = "jump",
                 eta: float = 0.0, backend: str = "auto", dtype: str | None = None):
        super().__init__()
        self.ir, self.denoiser, self.fusion = ir, denoiser, fusion
        self.schedule = schedule if schedule is not None else Schedule.linear()
        self.configure(tau=tau, tail=tail, tail_steps=tail_steps, start=start, eta=eta, backend=backend,
                       dtype=dtype)
        self.eval()

    # 1. Settings ------------------------------------------------------------------------------
    def configure(self, **settings) -> "DPIR":
        """Change sampler settings (tau, tail, tail_steps, start, eta, backend, dtype), validated."""
        merged = {**getattr(self, "settings", {}), **settings}
        tau, tail, steps = int(merged["tau"]), merged["tail"], merged["tail_steps"]
        if not 1 <= tau <= self.schedule.T:
            raise ValueError(f"tau must lie in [1, T={self.schedule.T}], got {tau}")
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
        if merged["start"] not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {merged['start']!r}")
        _backend.check_choice(merged["backend"])
        if merged["dtype"] not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(k for k in DTYPES if k)} or None, "
                             f"got {merged['dtype']!r}")
        if tail == "ancestral":
            merged["tail_steps"] = None
        elif steps is not None and not 1 <= int(steps) <= tau:
            raise ValueError(f"tail_steps must lie in [1, tau={tau}], got {steps}")
        merged["tau"] = tau
        self.settings = merged
        if hasattr(self.denoiser, "backend"):   # MIRNet's fused attention ops follow the pipeline's choice
            self.denoiser.backend = merged["backend"]
        self._timesteps = sample_timesteps(tau, tail, merged["tail_steps"])
        return self

    @classmethod
    def preset(cls, task: str, ir: nn.Module, denoiser: nn.Module, fusion: nn.Module, **overrides) -> "DPIR":
        """The paper's settings for a task: sr4x (τ 250, 50 DDIM steps, NFE 51), deblur and burst (τ 5, NFE 6)."""
        if task not in PRESETS:
            raise ValueError(f"task must be one of {sorted(PRESETS)}, got {task!r}")
        return cls(ir, denoiser, fusion, **{**PRESETS[task], **overrides})

    @classmethod
    def from_checkpoint(cls, path: str | Path, device=None, task: str | None = None,
                        tau: int | None = None) -> "DPIR":
        """Rebuild a pipeline saved by :func:`dpir_fast.save_checkpoint`; task/tau override its sampler."""
        from .checkpoints import load_pipeline
        pipe = load_pipeline(path)
        if task is not None:
            if task not in PRESETS:
                raise ValueError(f"task must be one of {sorted(PRESETS)}, got {task!r}")
            pipe.configure(**PRESETS[task])
        if tau is not None:
            pipe.configure(tau=tau)
        return pipe.to(device) if device is not None else pipe

    @classmethod
    def from_pretrained(cls, name: str = "demo-sr4x", device=None) -> "DPIR":
        """A pipeline whose weights ship inside the package: ``"demo-sr4x"`` (small, CPU-trained;
        dpir_fast/pretrained/MODEL_CARD.md). Stored in fp16, loaded as float32."""
        from .pretrained import pretrained_path
        return cls.from_checkpoint(pretrained_path(name), device=device)

    @property
    def tau(self) -> int:
        return self.settings["tau"]

    @property
    def nfe(self) -> int:
        """Network function evaluations per image: the IR net once + one per denoiser/fusion step."""
        return 1 + len(self._timesteps)

    @property
    def scale(self) -> int:
        return int(getattr(self.ir, "scale", 1))

    @property
    def in_channels(self) -> int:
        config = getattr(self.ir, "config", {})
        return int(config.get("in_chans", config.get("in_channels", config.get("inp_channels", 3))))

    @property
    def burst_frames(self) -> int | None:
        """Frames per burst when the IR net takes bursts [B, N, C, h, w] (``ir.input_kind == "burst"``)."""
        if getattr(self.ir, "input_kind", "image") != "burst":
            return None
        return int(getattr(self.ir, "burst_frames"))

    @property
    def device(self) -> torch.device:
        tensor = next(self.parameters(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    # 2. Input checks ----------------------------------------------------------------------------
    def _check_input(self, y) -> torch.Tensor:
        if not torch.is_tensor(y):
            raise ValueError(f"DPIR takes a torch tensor [B, C, H, W] in [0, 1], got {type(y).__name__}; "
                             "for a numpy HWC image use torch.from_numpy(img).permute(2, 0, 1)[None]")
        frames = self.burst_frames
        if frames is not None:
            if y.dim() != 5 or y.shape[1] != frames or y.shape[2] != self.in_channels:
                hint = " (add a batch dimension with y[None])" if y.dim() == 4 else ""
                raise ValueError(f"the IR network takes bursts [B, {frames}, {self.in_channels}, h, w] of packed "
                                 f"RAW frames, got shape {tuple(y.shape)}{hint}")
        elif y.dim() != 4:
            hint = " (add a batch dimension with y[None])" if y.dim() == 3 else ""
            raise ValueError(f"DPIR takes a 4-D tensor [B, C, H, W], got shape {tuple(y.shape)}{hint}")
        elif y.shape[1] != self.in_channels:
            raise ValueError(f"the IR network takes {self.in_channels} channels, got {y.shape[1]} "
                             f"(shape {tuple(y.shape)}); convert grayscale/RGBA images to RGB first")
        if y.numel() == 0:
            raise ValueError(f"empty input of shape {tuple(y.shape)}")
        if not y.is_floating_point():
            raise ValueError(f"DPIR takes floating-point images in [0, 1], got {y.dtype}; "
                             "for 8-bit images use y.float() / 255")
        if not torch.isfinite(y).all():
            raise ValueError("the input holds NaN or inf values; clean it (e.g. torch.nan_to_num) first")
        lo, hi = float(y.min()), float(y.max())
        if lo < -0.5 or hi > 1.5:
            raise ValueError(f"input values span [{lo:.3g}, {hi:.3g}], far outside [0, 1]; "
                             "divide 8-bit data by 255 (16-bit by 65535)")
        if lo < 0.0 or hi > 1.0:
            warnings.warn(f"input values span [{lo:.3g}, {hi:.3g}]; clamping to [0, 1]", stacklevel=3)
            y = y.clamp(0.0, 1.0)
        return y.to(self.device, torch.float32)

    def _autocast(self):
        dtype = DTYPES[self.settings["dtype"]]
        if dtype is None or dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # 3. Restoration -----------------------------------------------------------------------------
    @torch.no_grad()
    def restore_ir(self, y: torch.Tensor, camera=None) -> torch.Tensor:
        """The IR network's estimate E[x0|y] [B, 3, h·s, w·s] (float32, sRGB), checked to be finite.

        An IR net whose ``output_space`` is ``"linear"`` (BSRT: linear camera RGB) has its output brought
        to sRGB by :func:`dpir_fast.data.burst.linear_to_srgb` with ``camera`` (a Camera, a DBSR meta_info
        dict, one per image, or None for the default camera), as the paper does before fusion.
        """
        y = self._check_input(y)
        with self._autocast():
            x_ir = run_network(self.ir, y, self.scale).to(torch.float32)
        if not torch.isfinite(x_ir).all():
            raise FloatingPointError("the IR network produced NaN/inf; run in dtype='fp32' or 'bf16'")
        if getattr(self.ir, "output_space", "srgb") == "linear":
            from .data.burst import linear_to_srgb
            x_ir = linear_to_srgb(x_ir, camera)
        return x_ir

    @torch.no_grad()
    def forward(self, y: torch.Tensor, seed: int | Sequence[int] = 0, camera=None) -> torch.Tensor:
        """Restore y [B, C, h, w] (a burst net: [B, N, 4, h, w]) → [B, 3, h·s, w·s]; image b draws noise
        with seed + b (or seed[b]); ``camera``: see :meth:`restore_ir`."""
        out_device = y.device if torch.is_tensor(y) else None
        x_ir = self.restore_ir(y, camera)
        seeds = _seed_list(seed, x_ir.shape[0])
        s = self.settings

        def denoise(inp: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return run_network(self.denoiser, inp)

        def fuse(a: torch.Tensor, b: torch.Tensor, t: int) -> torch.Tensor:
            with self._autocast():
                return self.fusion(a, b.to(a.dtype), t)

        if _backend.resolve("triton", x_ir.device, s["backend"]) == "reference":
            x0 = dpir_sample_ref(x_ir, denoise, fuse, self.schedule, s["tau"], seeds, s["tail"], s["tail_steps"],
                                 s["start"], s["eta"])
        else:
            plan = Plan.make(self.schedule, s["tau"], s["tail"], s["tail_steps"], s["start"], s["eta"])
            with self._autocast():
                engine = Engine(plan, denoise, self.fusion, DTYPES[s["dtype"]], backend=s["backend"])
                x0 = engine.run(x_ir, seeds)
        if not torch.isfinite(x0).all():
            raise FloatingPointError("the sampler produced NaN/inf; run in dtype='fp32' or 'bf16'")
        return x0.clamp(0.0, 1.0).to(out_device)
