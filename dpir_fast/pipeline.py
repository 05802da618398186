"""DPIR: the user-facing pipeline (IR net once, jump to τ, τ steps of denoiser + fusion)."""
from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _backend, ops, tiling
from .checkpoints import FORMAT, VERSION, CheckpointError, build_model, model_record, read_checkpoint
from .engine import GRAPH_MODES, Engine, Plan, versions
from .models._common import crop_to, dihedral, pad_to_multiple, undo_dihedral
from .reference.sampler import STARTS, TAILS, dpir_sample_ref, sample_timesteps
from .schedule import Schedule

PRESETS = {
    "sr4x": dict(tau=250, tail="ddim", tail_steps=50),
    "deblur": dict(tau=5, tail="ancestral", tail_steps=None),
    "burst": dict(tau=5, tail="ancestral", tail_steps=None),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLER_SETTINGS = ("tau", "tail", "tail_steps", "start", "eta", "ir_ensemble")   # what a pipeline file keeps
IR_ENSEMBLES = (1, 2, 4, 8)   # IR outputs averaged over the first n flips/transpositions (models._common.dihedral)
DEFAULTS = dict(tau=5, tail="ancestral", tail_steps=None, start="jump", eta=0.0, ir_ensemble=1, backend="auto",
                dtype=None, tile=None, tile_overlap=64, batch_size=4, max_pixels=None, compile=(), graphs="auto",
                channels_last=True)
NETWORKS = ("ir", "denoiser", "fusion")   # what the ``compile`` setting names
# The measured peak bytes per output pixel is multiplied by this (allocator slack, cuDNN workspaces). Images whose
# batch would fit even at UPPER_BYTES_PER_PIXEL (far above what the paper's networks need) skip the measurement.
MEMORY_SLACK = 1.5
# Pixels mirrored around the denoiser's input (run_network's margin): MIRNet's zero-padded convolutions otherwise
# see a step at every image border and leave noise there (the demo's flat images: 1.3/255 off at the borders,
# 0.6/255 inside). Costs (1 + 16/H)(1 + 16/W) of the denoiser's compute: 3.5 % at 1280×720.
DENOISER_MARGIN = 8
UPPER_BYTES_PER_PIXEL = 64 * 1024


def pad_frames(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`~dpir_fast.models._common.pad_to_multiple` for images [B, C, H, W] and bursts [B, N, C, H, W]
    (every frame padded alike): (padded x, the original (H, W))."""
    padded, size = pad_to_multiple(x.flatten(1, -3), multiple)
    return padded.view(*x.shape[:-2], *padded.shape[-2:]), size


def run_network(net: nn.Module, x: torch.Tensor, scale: int = 1, margin: int = 0) -> torch.Tensor:
    """net(x) with x reflect-padded to ``net.size_multiple`` and the output cropped back (× scale).

    x is [B, C, H, W], or a burst [B, N, C, H, W] whose frames are padded alike. ``margin`` > 0 first mirrors
    that many pixels (at most the image's side − 1) around the image, so that the network's zero-padded
    convolutions meet no false edge at its border; the output keeps its memory format.
    """
    m = min(margin, x.shape[-2] - 1, x.shape[-1] - 1)
    if m > 0:
        fmt = _layout(x)
        mirrored = F.pad(x.flatten(1, -3), (m, m, m, m), mode="reflect")
        x = mirrored.view(*x.shape[:-2], *mirrored.shape[-2:]).contiguous(memory_format=fmt)
    padded, size = pad_frames(x, int(getattr(net, "size_multiple", 1)))
    raw = net(padded)
    out = crop_to(raw, size, scale)
    if m <= 0:
        return out
    fmt = _layout(raw)
    h, w = (side - 2 * m * scale for side in out.shape[-2:])
    return out[..., m * scale:m * scale + h, m * scale:m * scale + w].contiguous(memory_format=fmt)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an image batch stored so, else the contiguous format."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


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
    [0, 1], s the IR net's scale; or a list of images [C, h, w] / [1, C, h, w] of any sizes → a list
    (equal tile shapes share batches). The IR net runs once; the sampler starts at τ (``start="jump"``:
    the closed-form jump of Lemma 3.2, or ``"forward"``: SDEdit/CCDF) and runs τ ancestral steps
    (``tail="ancestral"``) or ``tail_steps`` DDIM steps (``tail="ddim"``), each one denoiser and one
    fusion evaluation. ``ir_ensemble`` = n in (1, 2, 4, 8) averages the IR net's outputs on the first n
    flips/transpositions of y (a self-ensemble: n IR evaluations, ~0.2 dB on the demos' validation crops).
    ``pipe.nfe`` = n + the step count. The denoiser receives [x̃_t, σ̃_t] as one [B, C + 1, h·s, w·s] tensor; the
    fusion gets (x_IR, x_den, t).

    Engine settings: ``backend`` ("auto", "fast", "reference", "triton"); ``dtype`` ("bf16", "fp16",
    "fp32"; None: bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere); ``tile`` (None: as large as
    memory and ``max_pixels`` allow; or a side / (h, w) in output pixels) and ``tile_overlap`` (output
    pixels): the whole pipeline runs on overlapping tiles blended with raised-cosine weights, the noise
    drawn per global pixel; ``batch_size`` tiles per batch; ``compile``: the networks to ``torch.compile``
    (any of "ir", "denoiser", "fusion", or "all"; the fusion only where Triton does not fuse it, as on CPU;
    each compiles on its first call and again for a new tile shape: worth it for many same-sized images);
    ``graphs``: CUDA-graph capture of the sampling loop ("auto", "on", "off"; :class:`~dpir_fast.engine.Engine`);
    ``channels_last``: the denoiser's memory format (True: NHWC, the layout of cuDNN's and oneDNN's fast
    convolutions; False: NCHW, as a baseline).
    """

    def __init__(self, ir: nn.Module, denoiser: nn.Module, fusion: nn.Module, schedule: Schedule | None = None,
                 tau: int = 5, tail: str = "ancestral", tail_steps: int | None = None, start: str = "jump",
                 eta: float = 0.0, ir_ensemble: int = 1, backend: str = "auto", dtype: str | None = None, tile=None,
                 tile_overlap: int = 64, batch_size: int = 4, max_pixels: int | None = None,
                 compile: Sequence[str] | str = (), graphs: str = "auto", channels_last: bool = True):
        super().__init__()
        self.ir, self.denoiser, self.fusion = ir, denoiser, fusion
        self.schedule = schedule if schedule is not None else Schedule.linear()
        self._cache: dict = {}   # run-time state: the engine, the compiled networks, the memory probe
        self.configure(tau=tau, tail=tail, tail_steps=tail_steps, start=start, eta=eta, ir_ensemble=ir_ensemble,
                       backend=backend, dtype=dtype, tile=tile, tile_overlap=tile_overlap, batch_size=batch_size,
                       max_pixels=max_pixels, compile=compile, graphs=graphs, channels_last=channels_last)
        self.eval()

    # 1. Settings ------------------------------------------------------------------------------
    def configure(self, **settings) -> "DPIR":
        """Change settings (those of ``DEFAULTS``: sampler, backend, dtype, tiling, batching), validated."""
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"unknown settings {unknown}; valid: {sorted(DEFAULTS)}")
        merged = {**DEFAULTS, **getattr(self, "settings", {}), **settings}
        tau, tail, steps = int(merged["tau"]), merged["tail"], merged["tail_steps"]
        if not 1 <= tau <= self.schedule.T:
            raise ValueError(f"tau must lie in [1, T={self.schedule.T}], got {tau}")
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
        if merged["start"] not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {merged['start']!r}")
        ensemble = merged["ir_ensemble"]
        if isinstance(ensemble, bool) or ensemble not in IR_ENSEMBLES:
            raise ValueError(f"ir_ensemble must be one of {IR_ENSEMBLES} (IR outputs averaged over that many "
                             f"flips/transpositions of the input), got {ensemble!r}")
        if ensemble > 1 and self.burst_frames is not None:
            raise ValueError("ir_ensemble > 1 flips the input, which would scramble a RAW burst's Bayer pattern; "
                             "use ir_ensemble=1 with a burst IR net")
        _backend.check_choice(merged["backend"])
        if merged["dtype"] is not None and merged["dtype"] not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None (the device's default), "
                             f"got {merged['dtype']!r}")
        if tail == "ancestral":
            merged["tail_steps"] = None
        elif steps is not None and not 1 <= int(steps) <= tau:
            raise ValueError(f"tail_steps must lie in [1, tau={tau}], got {steps}")
        merged["tau"] = tau
        merged["tile"] = _tile_setting(merged["tile"])
        for name, low in (("tile_overlap", 0), ("batch_size", 1), ("max_pixels", 1)):
            value = merged[name]
            if (value is not None or name != "max_pixels") and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if merged["graphs"] not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {merged['graphs']!r}")
        merged["compile"] = networks_to_compile(merged["compile"])
        if not isinstance(merged["channels_last"], bool):
            raise ValueError(f"channels_last must be True or False, got {merged['channels_last']!r}")
        self.settings = merged
        self._cache.clear()
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
    def from_checkpoint(cls, path: str | Path | dict, device=None, task: str | None = None,
                        tau: int | None = None) -> "DPIR":
        """Rebuild a pipeline saved by :func:`dpir_fast.save_checkpoint` (a file, or the name of a shipped
        pipeline: :meth:`from_pretrained`); task/tau override its sampler."""
        from .pretrained import checkpoint_path
        pipe = load_pipeline(path if isinstance(path, dict) else checkpoint_path(path))
        if task is not None:
            if task not in PRESETS:
                raise ValueError(f"task must be one of {sorted(PRESETS)}, got {task!r}")
            pipe.configure(**PRESETS[task])
        if tau is not None:
            pipe.configure(tau=tau)
        return pipe.to(device) if device is not None else pipe

    def pipeline_record(self) -> dict:
        """What :func:`~dpir_fast.save_checkpoint` writes: the sampler settings, the schedule and each network's
        architecture, config and weights."""
        return {"pipeline": {k: self.settings[k] for k in SAMPLER_SETTINGS}, "schedule": self.schedule.config(),
                **{part: model_record(getattr(self, part)) for part in NETWORKS}}

    @classmethod
    def from_pretrained(cls, name: str = "demo-sr4x", device=None) -> "DPIR":
        """A pipeline whose weights ship inside the package: ``"demo-sr4x"`` or ``"demo-deblur"`` (small,
        CPU-trained; dpir_fast/pretrained/MODEL_CARD.md). Stored in fp16, loaded as float32."""
        from .pretrained import pretrained_path
        return cls.from_checkpoint(pretrained_path(name), device=device)

    @property
    def tau(self) -> int:
        return self.settings["tau"]

    @property
    def nfe(self) -> int:
        """Network function evaluations per image: the IR net's (``ir_ensemble`` of them) + one per
        denoiser/fusion step."""
        return self.settings["ir_ensemble"] + len(self._timesteps)

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

    @property
    def dtype_name(self) -> str:
        """The networks' precision this run uses: the ``dtype`` setting, else ``_backend.default_precision`` (bf16
        on CUDA and on CPUs with native bf16, fp32 elsewhere)."""
        if self.settings["dtype"] is not None:
            return self.settings["dtype"]
        return _backend.default_precision(self.device)[0]

    @property
    def alignment(self) -> int:
        """Input-grid multiple of tile origins and sizes (the IR net's and, times the scale, the denoiser's)."""
        return tiling.alignment(int(getattr(self.ir, "size_multiple", 1)),
                                int(getattr(self.denoiser, "size_multiple", 1)), self.scale)

    # 2. Input checks ----------------------------------------------------------------------------
    def _check_input(self, y, name: str = "DPIR") -> torch.Tensor:
        if not torch.is_tensor(y):
            raise ValueError(f"{name} takes a torch tensor [B, C, H, W] in [0, 1], got {type(y).__name__}; "
                             "for a numpy HWC image use torch.from_numpy(img).permute(2, 0, 1)[None]")
        frames = self.burst_frames
        if frames is not None:
            if y.dim() != 5 or y.shape[1] != frames or y.shape[2] != self.in_channels:
                hint = " (add a batch dimension with y[None])" if y.dim() == 4 else ""
                raise ValueError(f"the IR network takes bursts [B, {frames}, {self.in_channels}, h, w] of packed "
                                 f"RAW frames, got shape {tuple(y.shape)}{hint}")
        elif y.dim() != 4:
            hint = " (add a batch dimension with y[None])" if y.dim() == 3 else ""
            raise ValueError(f"{name} takes a 4-D tensor [B, C, H, W], got shape {tuple(y.shape)}{hint}")
        elif y.shape[1] != self.in_channels:
            raise ValueError(f"the IR network takes {self.in_channels} channels, got {y.shape[1]} "
                             f"(shape {tuple(y.shape)}); convert grayscale/RGBA images to RGB first")
        if y.numel() == 0:
            raise ValueError(f"empty input of shape {tuple(y.shape)}")
        if not y.is_floating_point():
            raise ValueError(f"{name} takes floating-point images in [0, 1], got {y.dtype}; "
                             "for 8-bit images use y.float() / 255")
        if not torch.isfinite(y).all():
            raise ValueError(f"{name}: the input holds NaN or inf values; clean it (e.g. torch.nan_to_num) first")
        lo, hi = float(y.min()), float(y.max())
        if lo < -0.5 or hi > 1.5:
            raise ValueError(f"{name}: input values span [{lo:.3g}, {hi:.3g}], far outside [0, 1]; "
                             "divide 8-bit data by 255 (16-bit by 65535)")
        if lo < 0.0 or hi > 1.0:
            warnings.warn(f"input values span [{lo:.3g}, {hi:.3g}]; clamping to [0, 1]", stacklevel=4)
            y = y.clamp(0.0, 1.0)
        return y.to(self.device, torch.float32)

    def _images(self, y) -> tuple[list[torch.Tensor], list[bool] | None]:
        """y as a list of single images [1, C, h, w] (bursts [1, N, C, h, w]) on the device, and for a list
        input whether each element came with its batch dimension (None for a tensor input)."""
        if not isinstance(y, (list, tuple)):
            return list(self._check_input(y).split(1)), None
        if not y:
            raise ValueError("got an empty list of images")
        rank = 4 if self.burst_frames is None else 5
        batched = [torch.is_tensor(img) and img.dim() == rank for img in y]
        images = []
        for i, (img, has_batch) in enumerate(zip(y, batched)):
            img = img if has_batch or not torch.is_tensor(img) else img[None]
            if torch.is_tensor(img) and img.shape[0] != 1:
                raise ValueError(f"image {i} of the list has a batch of {img.shape[0]}; list elements are single "
                                 "images [C, h, w] or [1, C, h, w]")
            images.append(self._check_input(img, f"image {i} of the list"))
        return images, batched

    def _autocast(self):
        dtype = DTYPES[self.dtype_name]
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)   # no cache: graph-capturable

    def _check_finite(self, x: torch.Tensor, stage: str) -> None:
        if bool(torch.isfinite(x).all()):
            return
        advice = {"fp16": "run with dtype='bf16' or 'fp32'", "bf16": "run with dtype='fp32'",
                  "fp32": "check the input and the checkpoint (its weights may hold NaN/inf)"}[self.dtype_name]
        raise FloatingPointError(f"{stage} produced NaN/inf values in {self.dtype_name}; {advice}")

    # 3. Restoration -----------------------------------------------------------------------------
    @torch.no_grad()
    def restore_ir(self, y: torch.Tensor, camera=None) -> torch.Tensor:
        """The IR network's estimate E[x0|y] [B, 3, h·s, w·s] (float32, sRGB), checked to be finite.

        An IR net whose ``output_space`` is ``"linear"`` (BSRT: linear camera RGB) has its output brought
        to sRGB by :func:`dpir_fast.data.burst.linear_to_srgb` with ``camera`` (a Camera, a DBSR meta_info
        dict, one per image, or None for the default camera), as the paper does before fusion.
        """
        y = self._check_input(y)
        return self._ir_estimate(y, camera)

    def _network(self, name: str) -> nn.Module:
        """The IR net, denoiser or fusion as the pipeline calls it: compiled (once, kept) where ``compile``
        names it."""
        if name not in self.settings["compile"]:
            return getattr(self, name)
        key = ("compiled", name)
        if key not in self._cache:
            self._cache[key] = torch.compile(getattr(self, name))
        return self._cache[key]

    def _ir_estimate(self, y: torch.Tensor, camera) -> torch.Tensor:
        net, n = self._network("ir"), self.settings["ir_ensemble"]
        with self._autocast():
            x_ir = run_network(net, y, self.scale).to(torch.float32)
            for k in range(1, n):   # the self-ensemble: each output mapped back, summed in float32
                x_ir += undo_dihedral(run_network(net, dihedral(y, k), self.scale), k)
        if n > 1:
            x_ir /= n
        self._check_finite(x_ir, f"the IR network ({type(self.ir).__name__})")
        if getattr(self.ir, "output_space", "srgb") == "linear":
            from .data.burst import linear_to_srgb
            x_ir = linear_to_srgb(x_ir, camera)
        return x_ir

    @torch.no_grad()
    def forward(self, y, seed: int | Sequence[int] = 0, camera=None):
        """Restore y [B, C, h, w] (a burst net: [B, N, 4, h, w]) → [B, 3, h·s, w·s], or a list of images of
        any sizes → a list. Image b draws noise with seed + b (or seed[b]); ``camera``: one for all or one per
        image (see :meth:`restore_ir`)."""
        images, batched = self._images(y)
        seeds = _seed_list(seed, len(images))
        cameras = list(camera) if isinstance(camera, (list, tuple)) else [camera] * len(images)
        if len(cameras) != len(images):
            raise ValueError(f"got {len(cameras)} cameras for {len(images)} images")
        outs = self._restore(images, seeds, cameras)
        if batched is None:
            return torch.cat(outs).to(y.device)
        return [out.to(src.device) if has_batch else out[0].to(src.device)
                for out, src, has_batch in zip(outs, y, batched)]

    def _restore(self, images: list[torch.Tensor], seeds: list[int], cameras: list) -> list[torch.Tensor]:
        """Every image [1, ...] through the tiles of its plan; equal tile shapes share batches."""
        plans = [self.plan(*img.shape[-2:]) for img in images]
        padded = [pad_frames(img, self.alignment)[0] for img in images]   # to each plan's size
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault(plan.tile, []).extend((i, k) for k in range(plan.n_tiles))
        blenders: dict[int, tiling.Blender] = {}
        outs: list[torch.Tensor | None] = [None] * len(images)
        batch = self.settings["batch_size"]
        for (th, tw), items in groups.items():
            for first in range(0, len(items), batch):
                chunk = items[first:first + batch]
                crops = torch.cat([padded[i][..., y:y + th, x:x + tw]
                                   for i, k in chunk for y, x in [plans[i].origins[k]]])
                x_ir = self._ir_estimate(crops, [cameras[i] for i, _ in chunk])
                x0 = self._sample(x_ir, [seeds[i] for i, _ in chunk], [plans[i].out_size for i, _ in chunk],
                                  [plans[i].out_origins[k] for i, k in chunk])
                for j, (i, k) in enumerate(chunk):
                    if plans[i].n_tiles == 1:
                        outs[i] = x0[j:j + 1]
                        continue
                    blender = blenders.setdefault(i, tiling.Blender(x0.shape[1], plans[i].out_size, x0.device))
                    blender.add(x0[j], plans[i].out_origins[k], tiling.blend_weights(plans[i], k, x0.device))
        for i, blender in blenders.items():
            outs[i] = blender.result()[None]
        results = []
        for out, img in zip(outs, images):
            out = crop_to(out, img.shape[-2:], self.scale)
            self._check_finite(out, "the sampler (denoiser + fusion)")
            results.append(out.clamp(0.0, 1.0))
        return results

    def _sample(self, x_ir: torch.Tensor, seeds: list[int], full_sizes, origins) -> torch.Tensor:
        """x0̂ of a batch of IR estimates placed at ``origins`` of their padded images (for the noise)."""
        s = self.settings
        if s["backend"] == "reference":
            def fuse(a: torch.Tensor, b: torch.Tensor, t: int) -> torch.Tensor:
                with self._autocast():
                    return self.fusion(a, b.to(a.dtype), t)
            return dpir_sample_ref(x_ir, self._denoise, fuse, self.schedule, s["tau"], seeds, s["tail"],
                                   s["tail_steps"], s["start"], s["eta"], full_sizes, origins)
        with self._autocast():
            return self._engine().run(x_ir, seeds, full_sizes, origins)

    def _denoise(self, inp: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        with self._autocast():
            return run_network(self._network("denoiser") if net is None else net, inp, margin=DENOISER_MARGIN)

    def _engine(self) -> Engine:
        """The engine of the current settings, device and weights (kept, with its CUDA graphs, while they hold)."""
        if "layout" not in self._cache:   # cuDNN's and oneDNN's fast convolutions are NHWC (CPU: 1.4x fp32)
            cl = self.settings["channels_last"]
            self.denoiser.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            self._cache["layout"] = cl
        key = (self.device, self.dtype_name, versions([*self.denoiser.parameters(), *self.fusion.parameters()]))
        if self._cache.get("engine_key") != key:
            s = self.settings
            plan = Plan.make(self.schedule, s["tau"], s["tail"], s["tail_steps"], s["start"], s["eta"])
            # a fusion Triton runs as one kernel stays as it is; any other may be compiled
            fused = ops.fuses(self.fusion, torch.empty(0, device=self.device), s["backend"])
            fusion = self.fusion if fused else self._network("fusion")
            self._cache["engine"] = Engine(plan, self._denoise, fusion, DTYPES[self.dtype_name],
                                           channels_last=s["channels_last"], backend=s["backend"],
                                           graphs=s["graphs"], params=list(self.denoiser.parameters()))
            self._cache["engine_key"] = key
        return self._cache["engine"]

    # 4. Memory ------------------------------------------------------------------------------------
    def plan(self, height: int, width: int) -> tiling.TilePlan:
        """The tiles an input of ``height`` × ``width`` (input pixels) runs in with the current settings; no
        image is allocated. Automatic tiles (``tile=None``) fit the device's free memory."""
        s, (h, w) = self.settings, (int(height), int(width))
        budget = per_pixel = None
        if s["tile"] is None:
            budget = tiling.free_memory(self.device)
            padded = tiling.padded_size(h, w, self.alignment)
            if padded[0] * padded[1] * self.scale ** 2 * s["batch_size"] * UPPER_BYTES_PER_PIXEL > budget:
                per_pixel = self.bytes_per_pixel()
        return tiling.plan_tiles(h, w, scale=self.scale, align=self.alignment, tile=s["tile"],
                                 overlap=s["tile_overlap"], bytes_per_pixel=per_pixel, budget_bytes=budget,
                                 batch=s["batch_size"], max_pixels=s["max_pixels"],
                                 in_channels=(self.burst_frames or 1) * self.in_channels, out_channels=3)

    @torch.no_grad()
    def bytes_per_pixel(self) -> float:
        """Peak bytes per output pixel of one image through the networks and the sampler's buffers, measured
        once per device and dtype on a small probe tile (times ``MEMORY_SLACK``)."""
        key = ("bytes_per_pixel", self.device, self.dtype_name)
        if key not in self._cache:
            side = self.alignment * math.ceil(64 / (self.alignment * self.scale))
            frames = () if self.burst_frames is None else (self.burst_frames,)
            y = torch.rand(1, *frames, self.in_channels, side, side, device=self.device)
            with self._autocast():   # the plain IR net: a compiled one would compile for the probe's shape too
                x_ir, peak_ir = tiling.peak_bytes(lambda: run_network(self.ir, y, self.scale).float())
            den = torch.rand(1, x_ir.shape[1] + 1, *x_ir.shape[-2:], device=self.device)
            x_den, peak_den = tiling.peak_bytes(lambda: self._denoise(den, self.denoiser))   # plain, as the IR
            margin = min(DENOISER_MARGIN, x_ir.shape[-1] - 1)   # the probe's margin is no large image's share
            peak_den *= x_ir.shape[-1] ** 2 / (x_ir.shape[-1] + 2 * margin) ** 2
            _, peak_fusion = tiling.peak_bytes(lambda: self.fusion(x_ir, x_den.to(x_ir.dtype), 1))
            # float32 images: x_IR, x_t, x0̂, and the self-ensemble's current output; the denoiser input
            images = 3 + (1 if self.settings["ir_ensemble"] > 1 else 0)
            buffers = 4 * (images * x_ir.shape[1] + 1) + 4 * 4
            self._cache[key] = MEMORY_SLACK * (max(peak_ir, peak_den, peak_fusion) / x_ir[0, 0].numel() + buffers)
        return self._cache[key]


def _tile_setting(tile):
    """None, or (h, w) output pixels from an int or a pair."""
    if tile is None:
        return None
    sides = tuple(tile) if isinstance(tile, (tuple, list)) else (tile, tile)
    if len(sides) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sides):
        raise ValueError(f"tile must be None (automatic), a side in output pixels or (h, w), got {tile!r}")
    return sides


def networks_to_compile(names) -> tuple[str, ...]:
    """The networks to compile, in NETWORKS order, from "all", one name, or a collection of names."""
    chosen = NETWORKS if names == "all" else (names,) if isinstance(names, str) else names
    if not isinstance(chosen, (tuple, list, set, frozenset)) or any(n not in NETWORKS for n in chosen):
        raise ValueError(f"compile takes \"all\" or names among {NETWORKS}, got {names!r}")
    return tuple(n for n in NETWORKS if n in chosen)


def load_pipeline(path_or_dict) -> DPIR:
    """The :class:`DPIR` saved in one file (or its dict) by :func:`~dpir_fast.save_checkpoint`."""
    obj = read_checkpoint(path_or_dict)
    if obj.get("format") != FORMAT or "pipeline" not in obj:
        what = f"a single {obj['arch']}" if "arch" in obj else "no dpir_fast pipeline"
        raise CheckpointError(f"this file holds {what}; a pipeline file is written by "
                              "dpir_fast.save_checkpoint(pipe, path) for a DPIR pipeline")
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"the file has format version {obj['version']}, newer than this dpir_fast "
                              f"reads ({VERSION}); upgrade dpir_fast")
    parts = {part: build_model(obj[part]) for part in NETWORKS}
    return DPIR(**parts, schedule=Schedule.from_config(obj["schedule"]), **obj["pipeline"])
