"""Training the per-task fusion network with the IR net and the denoiser frozen (paper eq. 6).

Per sample: y = degrade(x0), x_IR = IR(y) (frozen, eval; :func:`ir_pair`), t uniform in [1, τ_max] (τ_max =
the task's τ, the timesteps the sampler runs the fusion at; the paper leaves the range open),
x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε (a draw of q(x_t | x0)), x_den = denoiser(denoiser_input_ref(x_t, t))
(frozen, called as the pipeline calls it), loss = MSE(fusion(x_IR, x_den, t), x0) (``loss="mse"``).

Not the paper's recipe, both off by default:
- ``loss="psnr"`` (:func:`~dpir_fast.train.common.psnr_loss`): minus the mean PSNR of the crops, so that crops
  whose error no network removes (dead leaves under a long blur) cannot drown the photos;
- ``ir_anchor`` = p > 0: a fraction p of the samples draws x_t around x_IR instead,
  x_t = sqrt(ᾱ_t)·x_IR + sqrt(1 − ᾱ_t)·ε, what the jump gives the sampler at t = τ, where the denoiser knows no
  more than the IR net (a weak IR net and denoiser then learn to refine x_IR rather than trust a denoiser estimate
  that is only as good as x_IR).

With a crop pool (``pool`` > 0) the training crops are a fixed set and each crop's IR output is computed once, one
crop at a time (so it does not depend on which batch it fell in), and kept in memory.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.datasets import CropStream, ImageFolder, center_crops
from ..data.blur import motion_blur
from ..data.burst import linear_to_srgb, synthetic_burst
from ..data.degrade import bicubic_downsample
from ..metrics import psnr
from ..models._common import crop_to, pad_to_multiple
from ..pipeline import DENOISER_MARGIN, PRESETS, run_network
from ..reference.sampler import denoiser_input_ref
from ..schedule import Schedule
from .common import StepRandom, TrainError, psnr_loss

TASKS = tuple(PRESETS)
DEBLUR_NOISE = 2 / 255   # the deblurring inputs' noise: σ up to this, as a camera's at base ISO
LOSSES = {"mse": F.mse_loss, "psnr": psnr_loss}


def _generator(seed: int, crop_id: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + crop_id) % 2**63)


def degrade_image(task: str, x0: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
    """The IR net's input y for sr4x (MATLAB bicubic ×4, rounded to 8 bits) and deblur (a random camera-shake
    kernel per crop and Gaussian noise of σ ~ U[0, DEBLUR_NOISE], keyed by (seed, crop id)):
    x0 [B, 3, H, W] → y [B, 3, h, w]."""
    if task == "sr4x":
        return bicubic_downsample(x0, 4)
    if task == "deblur":
        size = min(31, min(x0.shape[-2:]) // 2 * 2 - 1)
        blurred = []
        for i, c in enumerate(ids.tolist()):
            g = _generator(seed, int(c))
            sigma = DEBLUR_NOISE * float(torch.rand(1, generator=g))
            blurred.append(motion_blur(x0[i:i + 1], size, sigma, generator=g)[0])
        return torch.cat(blurred)
    raise TrainError(f"task must be sr4x or deblur for a single-image degradation, got {task!r}")


def ir_pair(task: str, ir: nn.Module, x0: torch.Tensor, ids: torch.Tensor,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_IR, target), both [B, 3, H, W] sRGB: the frozen IR net's estimate from the degraded crops, and the
    clean image it estimates. burst: a DBSR synthetic RAW burst per crop (keyed by (seed, crop id)), the IR
    output and the linear ground truth both brought to sRGB through that burst's camera."""
    if task not in TASKS:
        raise TrainError(f"task must be one of {TASKS}, got {task!r}")
    if task != "burst":
        return ir_forward(ir, degrade_image(task, x0, ids, seed)), x0
    frames = int(getattr(getattr(ir, "module", ir), "burst_frames", 14))
    estimates, targets = [], []
    for i, c in enumerate(ids.tolist()):
        sb = synthetic_burst(x0[i].cpu(), frames, generator=_generator(seed, int(c)))
        estimates.append(linear_to_srgb(ir_forward(ir, sb.burst[None].to(x0.device)), sb.camera))
        targets.append(linear_to_srgb(sb.gt[None], sb.camera).to(x0.device))
    return torch.cat(estimates), torch.cat(targets)


def ir_forward(ir: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """IR(y) → [B, 3, H, W] float32 for an image [B, C, h, w] or a burst [B, N, C, h, w]."""
    if y.dim() != 4:
        return ir(y).float()
    core = getattr(ir, "module", ir)  # attributes of a DDP-wrapped network live on .module
    padded, size = pad_to_multiple(y, int(getattr(core, "size_multiple", 1)))
    return crop_to(ir(padded), size, int(getattr(core, "scale", 1))).float()


class FusionTask:
    """The fusion network's training task for :func:`~dpir_fast.train.loop.fit`."""

    name = "fusion"

    def __init__(self, task: str, fusion: nn.Module, ir: nn.Module, denoiser: nn.Module, data: ImageFolder,
                 crop: int, seed: int = 0, t_max: int | None = None, pool: int = 0,
                 schedule: Schedule | None = None, val: ImageFolder | None = None, val_images: int = 8,
                 ir_anchor: float = 0.0, loss: str = "mse"):
        if not 0.0 <= ir_anchor <= 1.0:
            raise TrainError(f"ir_anchor is a probability in [0, 1], got {ir_anchor}")
        if loss not in LOSSES:
            raise TrainError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.task, self.model, self.seed, self.pool = task, fusion, int(seed), int(pool)
        self.ir_anchor, self.loss_name = float(ir_anchor), loss
        if task not in TASKS:
            raise TrainError(f"task must be one of {TASKS}, got {task!r}")
        self.schedule = schedule or Schedule.linear()
        self.alpha_bar = torch.tensor(self.schedule.alpha_bar)  # float64 [T + 1]
        self.t_max = int(t_max or PRESETS[task]["tau"])
        if not 1 <= self.t_max <= self.schedule.T:
            raise TrainError(f"t_max must lie in [1, {self.schedule.T}], got {self.t_max}")
        self.ir, self.denoiser = ir.eval().requires_grad_(False), denoiser.eval().requires_grad_(False)
        self.dataset = CropStream(data, crop, seed, pool=pool)
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.val_ts = sorted({1, max(1, self.t_max // 2), self.t_max}) if val is not None else []
        # x_t drawn around x0 (the paper's training draw) and, with an anchor, around x_IR too (what the sampler's
        # first step meets, and what an anchored fusion is trained on)
        self.val_centres = ("", "_anchor") if self.ir_anchor > 0 else ("",)
        self.val_columns = ("val_psnr_ir", *(f"val_psnr{c}_t{t}" for c in self.val_centres for t in self.val_ts)
                            ) if val is not None else ()
        if val is not None:
            self.val_x0 = center_crops(val, crop, val_images)
            self.val_ids = torch.arange(len(self.val_x0)) + 2**40  # degradation keys apart from training crops
            self.val_eps = torch.randn(self.val_x0.shape, generator=torch.Generator().manual_seed(4321))
            self.val_ir = None

    def to(self, device) -> "FusionTask":
        self.ir.to(device)
        self.denoiser.to(device)
        return self

    @torch.no_grad()
    def ir_estimate(self, ids: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_IR, target) [B, 3, H, W] of the crops (ids, x0), from the cache when there is a crop pool."""
        if not self.pool:
            return ir_pair(self.task, self.ir, x0, ids, self.seed)
        for i, c in enumerate(ids.tolist()):
            if c not in self.cache:
                pair = ir_pair(self.task, self.ir, x0[i:i + 1], ids[i:i + 1], self.seed)
                self.cache[c] = tuple(t.to("cpu") for t in pair)
        return tuple(torch.cat([self.cache[c][j] for c in ids.tolist()]).to(x0.device) for j in (0, 1))

    @torch.no_grad()
    def denoise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The frozen denoiser's estimate [B, 3, H, W] of x0 from x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε."""
        ab = self.alpha_bar.to(x0.device)[t].to(torch.float32)[:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        inp = torch.cat([denoiser_input_ref(x_t[i:i + 1], int(t[i]), self.schedule) for i in range(len(t))])
        return run_network(self.denoiser, inp, margin=DENOISER_MARGIN).float()   # as the pipeline runs it

    def loss(self, net: nn.Module, ids: torch.Tensor, x0: torch.Tensor, rnd: StepRandom) -> torch.Tensor:
        self.to(x0.device)
        x_ir, x0 = self.ir_estimate(ids, x0)
        t = rnd.randint(1, self.t_max)
        eps = rnd.randn(*x0.shape[1:])
        centre = x0
        if self.ir_anchor > 0:
            centre = torch.where((rnd.rand() < self.ir_anchor)[:, None, None, None], x_ir, x0)
        x_den = self.denoise(centre, t, eps)
        return LOSSES[self.loss_name](net(x_ir, x_den, t).float(), x0)

    @torch.no_grad()
    def validate(self, model: nn.Module, batch: int = 4) -> dict[str, float]:
        device = next(model.parameters()).device
        self.to(device)
        if self.val_ir is None:
            pairs = [ir_pair(self.task, self.ir, self.val_x0[i:i + batch].to(device), self.val_ids[i:i + batch],
                             self.seed) for i in range(0, len(self.val_x0), batch)]
            self.val_ir, self.val_target = (torch.cat([p[j] for p in pairs]) for j in (0, 1))
        x0 = self.val_target.to(device)
        out = {"val_psnr_ir": float(psnr(self.val_ir.clamp(0, 1), x0).mean())}
        eps = self.val_eps.to(device)
        x_ir = self.val_ir.to(device)
        for c, centre in zip(self.val_centres, (x0, x_ir)):
            for t in self.val_ts:
                scores = []
                for i in range(0, len(x0), batch):
                    tt = torch.full((len(x0[i:i + batch]),), t, device=device)
                    x_den = self.denoise(centre[i:i + batch], tt, eps[i:i + batch])
                    fused = model(x_ir[i:i + batch], x_den, tt).float().clamp(0, 1)
                    scores.append(psnr(fused, x0[i:i + batch]))
                out[f"val_psnr{c}_t{t}"] = float(torch.cat(scores).mean())
        return out

    def record(self) -> dict:
        return {"task": self.task, "crop": self.dataset.size, "t_max": self.t_max, "pool": self.pool,
                "schedule": self.schedule.config(), "ir_anchor": self.ir_anchor,
                "loss": self.loss_name}
