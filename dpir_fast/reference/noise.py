"""Counter-based Gaussian noise: the exact stream of Triton's ``tl.randn`` in plain PyTorch.

Every sampler draw is keyed by (seed, step, global pixel index), never by call order, so a fast
kernel drawing in-kernel noise reproduces the reference, and a tile of an image draws the very
numbers the whole image would at those pixels.

``tl.randn(seed, offset)`` runs Philox4x32-10 on the counter (offset_lo, offset_hi, 0, 0) with
the key (seed_lo, seed_hi), maps the first two words to uniforms and returns the cosine branch of
Box–Muller. We use ``offset = step·2³² + pixel`` with ``pixel = (c·H + y)·W + x`` on the full
image, and the image's seed as the key (:func:`noise_keys`).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
START_STEP = 0  # the stream of the start draw (jump or forward); reverse step t draws on stream t


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product a·b, for b uint32 values held in int64."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p_hi, p_lo = a * b_hi, a * b_lo                 # each < 2^48: exact in int64
    high = (p_hi + (p_lo >> 16)) >> 16
    low = ((p_hi << 16) + p_lo) & _MASK32
    return high, low


def philox4x32(seed: int, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor | None = None,
               c3: torch.Tensor | None = None, n_rounds: int = 10):
    """Philox4x32 on the counter (c0, c1, c2, c3) with key (seed_lo, seed_hi); uint32 words in int64."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c2 = torch.zeros_like(c0) if c2 is None else c2
    c3 = torch.zeros_like(c0) if c3 is None else c3
    for _ in range(n_rounds):
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _uniform(words: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float: the word read as int32, folded to ≥ 0, times 2⁻³¹(1 − 2⁻²³)."""
    signed = torch.where(words >= 2**31, words - 2**32, words)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def philox_randn(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """N(0, 1) float32 samples, bit-for-bit the stream of ``tl.randn(seed, offsets)`` up to libm rounding.

    ``offsets``: int64 tensor of any shape with values in [0, 2⁶³); ``seed`` in [0, 2⁶³).
    """
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seeds are integers in [0, 2**63), got {seed}")
    offsets = offsets.to(torch.int64)
    w0, w1, _, _ = philox4x32(int(seed), offsets & _MASK32, offsets >> 32)
    u1 = torch.clamp_min(_uniform(w0), 1.0e-7)
    u2 = _uniform(w1)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return radius * torch.cos(u2 * 6.283185307179586)


def _per_image(value, batch: int, name: str) -> list[tuple[int, int]]:
    """``value``: one (a, b) pair for the batch or one pair per image → a list of ``batch`` int pairs."""
    pairs = list(value)
    if len(pairs) == 2 and all(isinstance(v, numbers.Integral) for v in pairs):
        pairs = [pairs] * batch
    if len(pairs) != batch:
        raise ValueError(f"{name}: need one (h, w) pair for the batch or one per image ({batch}), got {value}")
    return [(int(a), int(b)) for a, b in pairs]


def noise_keys(seeds, shape: Sequence[int], full_size=None, origin=(0, 0)) -> torch.Tensor:
    """Noise keys [B, 4] int64 (seed, base, row, plane) of a batch of crops [B, C, h, w] (on the CPU).

    Value (c, y, x) of crop b draws counter ``step·2³² + base + y·row + x + c·plane``: pixel
    (c, y0 + y, x0 + x) of its full image. ``full_size`` (default: the crop's size) and ``origin``:
    one (h, w) pair for the batch or one per image, so a batch can mix tiles of different images.
    ``seeds``: ints in [0, 2⁶³), an int64 tensor [B], or keys [B, 4] already built (returned as is).
    """
    batch, channels, height, width = (int(v) for v in shape)
    if torch.is_tensor(seeds) and seeds.dim() == 2:
        if tuple(seeds.shape) != (batch, 4) or seeds.dtype != torch.int64:
            raise ValueError(f"noise keys must be int64 [{batch}, 4], got {seeds.dtype} {tuple(seeds.shape)}")
        return seeds
    seeds = seeds.tolist() if torch.is_tensor(seeds) else [int(s) for s in seeds]
    if len(seeds) != batch:
        raise ValueError(f"need one seed per image: {batch} images, {len(seeds)} seeds")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise ValueError(f"seeds are integers in [0, 2**63), got {seeds}")
    sizes = _per_image(full_size if full_size is not None else (height, width), batch, "full_size")
    keys = []
    for seed, (full_h, full_w), (y0, x0) in zip(seeds, sizes, _per_image(origin, batch, "origin")):
        if y0 < 0 or x0 < 0 or y0 + height > full_h or x0 + width > full_w:
            raise ValueError(f"a {height}×{width} crop at {(y0, x0)} does not fit a {full_h}×{full_w} image")
        if channels * full_h * full_w > 2**32:
            raise ValueError(f"an image of {channels}×{full_h}×{full_w} values exceeds the 2**32 noise counter; "
                             "restore it in parts")
        keys.append((seed, y0 * full_w + x0, full_w, full_h * full_w))
    return torch.tensor(keys, dtype=torch.int64)


def draw_noise(seeds, step: int, shape: Sequence[int], full_size=None, origin=(0, 0),
               device: torch.device | str | None = None) -> torch.Tensor:
    """The sampler noise z [B, C, h, w] (float32) of one step: crop b drawn with ``noise_keys(...)[b]``
    (``seeds``, ``full_size``, ``origin``: as :func:`noise_keys` takes them)."""
    _, channels, height, width = shape
    keys = noise_keys(seeds, shape, full_size, origin).tolist()
    c = torch.arange(channels, device=device, dtype=torch.int64).view(-1, 1, 1)
    y = torch.arange(height, device=device, dtype=torch.int64).view(1, -1, 1)
    x = torch.arange(width, device=device, dtype=torch.int64).view(1, 1, -1)
    return torch.stack([philox_randn(seed, (int(step) << 32) + base + y * row + x + c * plane)
                        for seed, base, row, plane in keys])
