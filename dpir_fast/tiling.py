"""Overlapping tiles with feathered blending, so images of any size run in bounded memory.

Two grids: the LR grid is the IR network's input, the output grid is ``scale`` times larger. The pipeline
reflect-pads the input to a multiple of ``align`` (on the LR grid); every tile origin and tile side is a multiple
of ``align``, so each tile sees exactly what the untiled run sees. A plan is pure arithmetic: nothing of image
size is allocated until the tiles run.
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SAFETY = 0.8
F32 = 4


def alignment(ir_multiple: int, den_multiple: int, scale: int) -> int:
    """The LR-grid multiple L: L % ir_multiple == 0 and (L * scale) % den_multiple == 0 (smallest such L)."""
    return math.lcm(ir_multiple, den_multiple // math.gcd(den_multiple, scale))


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def padded_size(height: int, width: int, align: int) -> tuple[int, int]:
    """(H_p, W_p): height/width rounded up to multiples of ``align``, the size after reflect padding."""
    h_p, w_p = _ceil_to(height, align), _ceil_to(width, align)
    if min(height, width) <= 0 or h_p - height >= height or w_p - width >= width:
        raise ValueError(f"a {height}x{width} image is too small to reflect-pad to a multiple of {align}: each side "
                         f"must be at least {align // 2 + 1} pixels (reflect padding must be shorter than the side); "
                         "upscale or pad the image first")
    return h_p, w_p


@dataclass(frozen=True)
class TilePlan:
    """Tiles of one padded image, in LR-grid pixels; the ``out_*`` properties are the same on the output grid.

    size (H_p, W_p) the padded input; tile (th, tw) one tile, <= size; overlap between neighbours (at least; the
    last tile of an axis ends at the border and may overlap more); origins (y0, x0) row-major; bytes_estimate the
    peak bytes of running the plan. All but ``scale`` and ``bytes_estimate`` are multiples of the alignment.
    """

    size: tuple[int, int]
    scale: int
    tile: tuple[int, int]
    overlap: int
    origins: tuple[tuple[int, int], ...]
    bytes_estimate: int

    @property
    def out_size(self) -> tuple[int, int]:
        return self.size[0] * self.scale, self.size[1] * self.scale

    @property
    def out_tile(self) -> tuple[int, int]:
        return self.tile[0] * self.scale, self.tile[1] * self.scale

    @property
    def out_origins(self) -> tuple[tuple[int, int], ...]:
        return tuple((y * self.scale, x * self.scale) for y, x in self.origins)

    @property
    def out_overlap(self) -> int:
        return self.overlap * self.scale

    @property
    def n_tiles(self) -> int:
        return len(self.origins)


def _axis_origins(size: int, tile: int, overlap: int) -> list[int]:
    if tile >= size:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _auto_tile(size: tuple[int, int], align: int, overlap: int, limit: int) -> tuple[int, int]:
    """Largest square-ish aligned tile of at most ``limit`` LR pixels, then shrunk per axis to the smallest tile
    that needs no more tiles (same count, less work). ``limit`` admits the smallest tile (the caller checks)."""
    (h_p, w_p), smallest = size, max(align, 2 * overlap + align)
    th = min(h_p, max(min(smallest, h_p), math.isqrt(limit) // align * align))
    tw = min(w_p, limit // th // align * align)
    th = min(h_p, limit // tw // align * align)
    return tuple(_balanced(s, t, overlap, align, min(smallest, s)) for s, t in ((h_p, th), (w_p, tw)))


def _balanced(size: int, tile: int, overlap: int, align: int, smallest: int) -> int:
    n = len(_axis_origins(size, tile, overlap))
    need = _ceil_to(-(-(size + (n - 1) * overlap) // n), align)
    return min(tile, max(need, smallest))


def plan_tiles(height: int, width: int, *, scale: int = 1, align: int = 1, tile=None, overlap: int = 64,
               bytes_per_pixel: float | None = None, budget_bytes: int | None = None, batch: int = 1,
               max_pixels: int | None = None, in_channels: int = 3, out_channels: int = 3) -> TilePlan:
    """Tiles for an unpadded ``height`` x ``width`` LR input. ``tile`` (int or (h, w)) and ``overlap`` are in output
    pixels; ``tile=None`` picks the largest tile whose batch fits ``budget_bytes`` next to the whole-image buffers
    (padded input, float32 accumulators and output) and has at most ``max_pixels`` output pixels.

    Raises MemoryError when even the smallest tile (side 2 * overlap + align on the LR grid) does not fit.
    """
    if scale < 1 or align < 1 or batch < 1 or overlap < 0:
        raise ValueError(f"need scale, align, batch >= 1 and overlap >= 0, got {scale}, {align}, {batch}, {overlap}")
    h_p, w_p = padded_size(height, width, align)
    ov = _ceil_to(-(-overlap // scale), align)
    out_px = h_p * w_p * scale * scale
    fixed = F32 * (in_channels * h_p * w_p + (2 * out_channels + 1) * out_px)
    per_px = batch * (bytes_per_pixel or 0)
    if tile is not None:
        th, tw = tile if isinstance(tile, (tuple, list)) else (tile, tile)
        th, tw = (min(s, max(align, t // scale // align * align)) for s, t in ((h_p, th), (w_p, tw)))
    else:
        side = max(align, 2 * ov + align)
        mh, mw = min(side, h_p), min(side, w_p)
        smallest = mh * mw * scale * scale
        if budget_bytes is not None and fixed + smallest * per_px > budget_bytes:
            _no_memory(budget_bytes, fixed, int(smallest * per_px), batch, ov)
        if max_pixels is not None and smallest > max_pixels:
            raise ValueError(f"max_pixels={max_pixels} is below the smallest tile ({mh * scale}x{mw * scale} "
                             "output pixels); allow more pixels or use a smaller overlap")
        limit = max_pixels if max_pixels is not None else math.inf
        if budget_bytes is not None and per_px:
            limit = min(limit, (budget_bytes - fixed) / per_px)
        if out_px <= limit:
            th, tw = h_p, w_p
        else:
            th, tw = _auto_tile((h_p, w_p), align, ov, int(limit) // (scale * scale))
    split = [t for s, t in ((h_p, th), (w_p, tw)) if t < s]
    ov = min([ov] + [t - align for t in split])
    origins = tuple((y, x) for y in _axis_origins(h_p, th, ov) for x in _axis_origins(w_p, tw, ov))
    return TilePlan((h_p, w_p), scale, (th, tw), ov, origins, int(fixed + th * tw * scale * scale * per_px))


def _no_memory(budget: int, fixed: int, tile_cost: int, batch: int, overlap: int):
    gib = 2.0 ** 30
    raise MemoryError(f"tiled restoration needs at least {(fixed + tile_cost) / gib:.2f} GiB "
                      f"({fixed + tile_cost} bytes: {fixed} for the whole-image input, accumulators and output, "
                      f"{tile_cost} for a batch of {batch} smallest tiles with LR overlap {overlap}) but only "
                      f"{budget / gib:.2f} GiB ({budget} bytes) are available; use a smaller batch, dtype='bf16', "
                      "a smaller overlap, or more memory")


def _ramp(n: int, profile: torch.Tensor, rising: bool) -> None:
    w = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)
    if rising:
        profile[:n] *= w
    else:
        profile[-n:] *= w.flip(0)


def blend_weights(plan: TilePlan, index: int, device=None) -> torch.Tensor:
    """Feathering weights [1, 1, th, tw] float32 of tile ``index`` on the output grid: a raised-cosine ramp of
    ``out_overlap`` pixels on each side facing a neighbour, 1 elsewhere; w(i) + w(n - 1 - i) = 1, all > 0."""
    n, profiles = plan.out_overlap, []
    for o, t, s in zip(plan.origins[index], plan.tile, plan.size):
        profile = torch.ones(t * plan.scale, dtype=torch.float64)
        if n and o > 0:
            _ramp(n, profile, rising=True)
        if n and o + t < s:
            _ramp(n, profile, rising=False)
        profiles.append(profile)
    return (profiles[0][:, None] * profiles[1][None, :]).to(device=device, dtype=torch.float32)[None, None]


class Blender:
    """Weighted sum of the tiles of one image on the output grid: ``result() = sum(w * tile) / sum(w)``."""

    def __init__(self, channels: int, out_size: tuple[int, int], device=None):
        self.acc = torch.zeros(channels, *out_size, dtype=torch.float32, device=device)
        self.weight = torch.zeros(1, *out_size, dtype=torch.float32, device=device)

    def add(self, tile: torch.Tensor, origin_out: tuple[int, int], weight: torch.Tensor) -> None:
        """tile [C, th, tw] or [1, C, th, tw] at output-grid ``origin_out`` (y, x); weight [1, 1, th, tw]."""
        (y, x), (th, tw) = origin_out, tile.shape[-2:]
        if (tile.shape[:-3] not in ((), (1,)) or weight.shape[-2:] != (th, tw) or y + th > self.acc.shape[1]
                or x + tw > self.acc.shape[2]):
            raise ValueError(f"tile {tuple(tile.shape)} at {origin_out} with weight {tuple(weight.shape)} does not "
                             f"fit the output grid {tuple(self.acc.shape[1:])}")
        w = weight.reshape(1, th, tw).to(self.acc)
        self.acc[:, y:y + th, x:x + tw] += w * tile.reshape(-1, th, tw).to(self.acc)
        self.weight[:, y:y + th, x:x + tw] += w

    def result(self) -> torch.Tensor:
        """The blended image [C, H_out, W_out] float32."""
        if not bool((self.weight > 0).all()):
            raise RuntimeError("some output pixels were covered by no tile; the tile plan does not cover the image")
        return self.acc / self.weight


def free_memory(device) -> int:
    """Bytes available for a run on ``device`` times a safety fraction: CUDA free memory plus this process's
    cached but unallocated blocks; any other device counts the host's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    else:
        try:
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(free * SAFETY)


class _StorageTracker(TorchDispatchMode):
    """Counts the bytes of storages created by ops while the mode is active, until each is garbage collected."""

    def __init__(self):
        super().__init__()
        self.live: set[int] = set()
        self.current = self.peak = 0

    def _free(self, key: int, nbytes: int) -> None:
        self.live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
            if key in inputs or key in self.live or nbytes == 0:
                continue
            self.live.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """(fn(*args, **kwargs), peak bytes of the tensors created during the call that were alive at once)."""
    with _StorageTracker() as tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak
