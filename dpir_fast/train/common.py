"""What every trainer shares: process setup (single or torchrun DDP), per-step randomness, EMA, the CSV log,
the progress line, training-state checkpoints that resume exactly, and the per-image PSNR loss.

Randomness is keyed, never carried: sample k's crop comes from (seed, k) (``data.datasets``) and the noise of
step s from a generator seeded with (seed, s) that draws the whole global batch, each process keeping its
slice. A resumed run, or one on another number of processes, therefore sees the same samples and noise; the
global RNG states are saved and restored all the same, for anything else that draws from them.
"""
from __future__ import annotations

import csv
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


class TrainError(ValueError):
    """A training run that cannot start or resume as asked (a clear message, no traceback at the CLI)."""


# 1. Processes ------------------------------------------------------------------------------------------------------
@dataclass
class Processes:
    """This process's place in the run: rank r of ``world``, its device; world = 1 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all processes (every process must call it)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world


def start_processes(device: str = "auto") -> Processes:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU); pick the device.

    Under torchrun each process takes GPU LOCAL_RANK when ``device`` is auto or cuda.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available here; use --device cpu")
    if use_cuda:
        index = local if world > 1 or ":" not in device else int(device.split(":")[1])
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Processes(rank, world, local, dev)


def stop_processes() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class StepRandom:
    """The random draws of one step: each draws for the whole global batch from a generator seeded by
    (seed, step) and returns this process's rows [b, ...]."""

    def __init__(self, seed: int, step: int, procs: Processes, batch: int):
        self.g = torch.Generator(procs.device).manual_seed((seed * 1_000_003 + step) % 2**63)
        self.device, self.global_batch = procs.device, batch * procs.world
        self.rows = slice(procs.rank * batch, (procs.rank + 1) * batch)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.global_batch, *shape, generator=self.g, device=self.device)[self.rows]

    def rand(self) -> torch.Tensor:
        return torch.rand(self.global_batch, generator=self.g, device=self.device)[self.rows]

    def randint(self, low: int, high: int) -> torch.Tensor:
        """Integers in [low, high] (both ends included)."""
        return torch.randint(low, high + 1, (self.global_batch,), generator=self.g, device=self.device)[self.rows]


# 2. EMA, RNG states ------------------------------------------------------------------------------------------------
class EMA:
    """An exponential moving average of a model's parameters and buffers: ema ← d·ema + (1 − d)·param."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise TrainError(f"the EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.shadow)
        return model


def rng_states() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(tuple(states["python"][:1]) + (tuple(states["python"][1]),) + tuple(states["python"][2:]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


# 3. Log and progress -----------------------------------------------------------------------------------------------
class CsvLog:
    """Rows of (step, loss, lr, images_per_s, elapsed_s, validation columns...) in ``path``; on resume the
    rows after the resumed step are dropped and the file continues."""

    def __init__(self, path: Path, val_columns: tuple[str, ...], resume_step: int | None):
        self.path, self.columns = path, ["step", "loss", "lr", "images_per_s", "elapsed_s", *val_columns]
        rows = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)


class ProgressLine:
    """``step s/N  loss  img/s  lr  eta``: redrawn in place on a TTY, else one line every ``every`` steps."""

    def __init__(self, total: int, every: int, enabled: bool = True, stream=None):
        self.total, self.every, self.enabled = total, every, enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()

    def show(self, step: int, loss: float, ips: float, lr: float, eta_s: float, force: bool = False) -> None:
        if not self.enabled or not (self.tty or force or step % self.every == 0):
            return
        filled = 20 * step // max(self.total, 1)
        eta = time.strftime("%H:%M:%S", time.gmtime(eta_s)) if math.isfinite(eta_s) else "--"
        line = (f"[{'#' * filled}{'-' * (20 - filled)}] step {step}/{self.total}  loss {loss:.5f}  "
                f"{ips:.1f} img/s  lr {lr:.2e}  eta {eta}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()


# 4. Loss -----------------------------------------------------------------------------------------------------------
PSNR_LOSS_FLOOR = (1 / 255) ** 2   # images closer than 1/255 RMS weigh no more than one that close


def psnr_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images [B, C, H, W] of 10·log10(MSE + PSNR_LOSS_FLOOR): minus the mean PSNR that evaluation
    reports. Each image's gradient is scaled by 1 / its MSE, so images whose error no network removes (dead leaves
    under a long blur, fine texture at 4×) cannot drown the smooth ones, as they do in the MSE over the batch."""
    mse = (out.float() - target.float()).square().mean((1, 2, 3))
    return 10 * torch.log10(mse + PSNR_LOSS_FLOOR).mean()
