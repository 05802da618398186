"""The training loop every trainer runs: Adam with a staircase exponential decay, optional EMA and bf16
autocast, DDP when there are several processes, checkpoints that resume bit for bit.

A task supplies ``name``, ``model`` (the trained network), ``dataset`` (a CropStream), ``val_columns``,
``loss(net, ids, x0, rnd) -> scalar``, ``validate(model) -> {column: value}`` and ``record() -> dict``.
Files written to ``out``: ``last.pt`` (the whole training state), ``model.pt`` (the network, EMA weights when
EMA is on, loadable with ``load_checkpoint``/``build_model``) and ``log.csv``. Ctrl-C, or SIGTERM (what ``kill``
and batch schedulers send), on a single process saves the state of the last completed step before stopping.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..checkpoints import atomic_save, model_record, save_checkpoint
from ..data.datasets import StepBatches
from .common import EMA, CsvLog, Processes, ProgressLine, StepRandom, TrainError, rng_states, set_rng_states

STATE_FORMAT = "dpir_fast_train"


@dataclass
class TrainConfig:
    """Optimisation settings; ``batch`` is the global batch, split evenly over the processes."""

    out: Path
    steps: int
    batch: int
    lr: float
    lr_decay: float
    lr_every: int
    seed: int = 0
    ema: float = 0.0
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    ckpt_every: int = 1000
    val_every: int = 1000
    log_every: int = 50
    workers: int = 2
    resume: bool = False
    quiet: bool = False
    extra: dict = field(default_factory=dict)


def _autocast(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision not in ("auto", "fp32"):
        raise TrainError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return contextlib.nullcontext()


def save_state(path: Path, task, cfg: TrainConfig, step: int, opt, sched, ema: EMA | None, world: int) -> None:
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    atomic_save({"format": STATE_FORMAT, "version": 1, "kind": task.name, "task": task.record(),
                  "config": config, "model": model_record(task.model), "optimizer": opt.state_dict(),
                  "scheduler": sched.state_dict(), "ema": ema.shadow if ema else None, "step": step,
                  "world": world, "rng": rng_states()}, path)


def read_state(path: Path) -> dict:
    """A training state written by :func:`save_state` (clear errors for anything else)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable file gets the same message
        raise TrainError(f"cannot read the training state {path}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainError(f"{path} is not a dpir_fast training state (last.pt written by a training run)")
    return state


def _restore(state: dict, task, opt, sched, ema: EMA | None) -> int:
    if state["kind"] != task.name:
        raise TrainError(f"the checkpoint is from a {state['kind']} run, not {task.name}")
    saved = state["model"]
    if saved["config"] != task.model.config:
        raise TrainError(f"the checkpoint's {saved['arch']} has config {saved['config']}, this run builds "
                         f"{task.model.config}; pass the options the run was started with")
    task.model.load_state_dict(saved["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.shadow = {k: v.to(next(iter(ema.shadow.values())).device) for k, v in state["ema"].items()}
    set_rng_states(state["rng"])
    return int(state["step"])


def _export(task, ema: EMA | None, out: Path) -> None:
    """model.pt: the trained network (EMA weights when EMA is on) as a rebuildable record."""
    model = task.model
    if ema is not None:
        model = type(model)(**model.config)
        ema.copy_to(model)
    save_checkpoint(model.cpu() if ema is not None else model, out / "model.pt")


def fit(task, cfg: TrainConfig, procs: Processes) -> dict:
    """Train ``task.model`` for ``cfg.steps`` steps (from the saved state when ``cfg.resume``); returns the
    last validation metrics (rank 0) and the final loss."""
    out = Path(cfg.out)
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    model = task.model.to(procs.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_every, gamma=cfg.lr_decay)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    start = 0
    if cfg.resume and (out / "last.pt").exists():
        start = _restore(read_state(out / "last.pt"), task, opt, sched, ema)
    elif cfg.resume and procs.main:
        print(f"no training state in {out}; starting from step 0", flush=True)
    net = (DistributedDataParallel(model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
           if procs.world > 1 else model)
    loader = DataLoader(task.dataset, batch_sampler=StepBatches(cfg.batch, procs.rank, procs.world, start),
                        num_workers=cfg.workers, pin_memory=procs.device.type == "cuda",
                        persistent_workers=cfg.workers > 0)
    log = CsvLog(out / "log.csv", task.val_columns, start if cfg.resume else None) if procs.main else None
    bar = ProgressLine(cfg.steps, cfg.log_every, enabled=procs.main and not cfg.quiet)
    batches = iter(loader)
    try:
        with _terminate_as_interrupt():
            return _steps(task, cfg, procs, model, net, opt, sched, ema, batches, log, bar, start)
    except KeyboardInterrupt:
        done = sched.last_epoch  # steps completed: the scheduler steps once per optimizer step
        if procs.world == 1 and done > start:
            save_state(out / "last.pt", task, cfg, done, opt, sched, ema, procs.world)
            bar.message(f"interrupted: state of step {done} saved in {out / 'last.pt'}; continue with --resume")
        raise


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block, so it stops training as Ctrl-C does (a background job of
    a non-interactive shell ignores SIGINT); the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():   # signal handlers live on the main thread
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _steps(task, cfg: TrainConfig, procs: Processes, model, net, opt, sched, ema, batches, log, bar,
           start: int) -> dict:
    out, local_batch = Path(cfg.out), cfg.batch // procs.world
    losses, t_log, t0, metrics, loss_value = [], time.perf_counter(), time.perf_counter(), {}, float("nan")
    for step in range(start + 1, cfg.steps + 1):
        ids, x0 = next(batches)
        x0 = x0.to(procs.device, non_blocking=True)
        with _autocast(cfg.precision, procs.device):
            loss = task.loss(net, ids, x0, StepRandom(cfg.seed, step, procs, local_batch))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at step {step}; lower --lr or use fp32")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.detach())
        last = step == cfg.steps
        if step % cfg.log_every == 0 or step % cfg.val_every == 0 or last:
            loss_value = procs.mean(float(torch.stack(losses).float().mean()))
            now = time.perf_counter()
            ips = len(losses) * cfg.batch / max(now - t_log, 1e-9)
            row = {"step": step, "loss": f"{loss_value:.6g}", "lr": f"{sched.get_last_lr()[0]:.6g}",
                   "images_per_s": f"{ips:.2f}", "elapsed_s": f"{now - t0:.1f}"}
            if procs.main and task.val_columns and (step % cfg.val_every == 0 or last):
                metrics = _validate(task, model, ema)
                row.update({k: f"{v:.4f}" for k, v in metrics.items()})
                bar.message(f"step {step}: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            bar.show(step, loss_value, ips, sched.get_last_lr()[0], (cfg.steps - step) * (now - t_log)
                     / len(losses), force=True)
            if log is not None:
                log.write(row)
            losses, t_log = [], time.perf_counter()
        if step % cfg.ckpt_every == 0 or last:
            if procs.main:
                save_state(out / "last.pt", task, cfg, step, opt, sched, ema, procs.world)
                _export(task, ema, out)
            procs.barrier()
    return {"loss": loss_value, **metrics}


@torch.no_grad()
def _validate(task, model, ema: EMA | None) -> dict:
    if ema is not None:
        model = ema.copy_to(type(model)(**model.config).to(next(model.parameters()).device))
    was_training = model.training
    model.eval()
    try:
        return task.validate(model)
    finally:
        model.train(was_training)
