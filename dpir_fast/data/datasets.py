"""Image-folder crop datasets for training: a deterministic stream of random crops, and fixed validation crops.

Sample k of a training run (k counts samples over the whole run and over all processes) is a function of
(seed, k) alone: image ``perm_e[k mod N]`` with ``perm_e`` the permutation of epoch e = k div N, and a crop
position and flips drawn from a generator seeded with (seed, k). So an interrupted run resumed at step s, or a
run on another number of processes, sees exactly the same samples, whatever the DataLoader workers do.

Files that cannot be used (corrupt, unreadable, smaller than the crop) are skipped at scan time and listed in
``skipped``; a folder with no usable image raises :class:`DatasetError` naming the reasons.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from ..models._common import dihedral
from .images import ImageReadError, find_images, read_image

CACHE_LIMIT = 2 << 30  # decoded bytes kept in memory by cache="auto"


class DatasetError(ValueError):
    """A training data folder that cannot be used (missing, empty, no usable image)."""


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as stored, EXIF orientation applied, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            # PNG keeps EXIF after the pixels (reading it decodes them): only header formats are asked
            orientation = im.getexif().get(0x0112, 1) if im.format in ("JPEG", "MPO", "TIFF", "WEBP") else 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


class ImageFolder:
    """The usable images of folders (recursively), each at least ``min_size`` pixels on both sides.

    ``skipped``: [(path, reason)] for files left out. ``cache``: True keeps the decoded images in memory,
    "auto" does so while they fit in CACHE_LIMIT bytes; caching decodes every file now, so truncated files are
    caught here too.
    """

    def __init__(self, roots, min_size: int = 1, cache: bool | str = "auto"):
        roots = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
        for root in roots:
            if not root.exists():
                raise DatasetError(f"data folder {root} does not exist")
        files, _ = find_images(roots, recursive=True)
        if not files:
            raise DatasetError(f"no image files (png, jpg, tif, ...) in {', '.join(map(str, roots))}")
        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        for path in files:
            try:
                h, w = _header_size(path)
            except ImageReadError as err:
                self.skipped.append((path, f"unreadable ({err.reason})"))
                continue
            if min(h, w) < min_size:
                self.skipped.append((path, f"{h}x{w} is smaller than the {min_size}x{min_size} crop"))
                continue
            self.paths.append(path)
            self.sizes.append((h, w))
        total = sum(3 * h * w for h, w in self.sizes)
        self._cache: list[torch.Tensor] | None = None
        if cache is True or (cache == "auto" and total <= CACHE_LIMIT):
            self._fill_cache()
        if not self.paths:
            reasons = "; ".join(f"{p.name}: {r}" for p, r in self.skipped[:5])
            raise DatasetError(f"none of the {len(files)} image files in {', '.join(map(str, roots))} can be "
                               f"used ({reasons}{'; ...' if len(self.skipped) > 5 else ''})")

    def _fill_cache(self) -> None:
        kept, cache = [], []
        for path, size in zip(self.paths, self.sizes):
            try:
                cache.append(_to_storage(read_image(path)))
            except ImageReadError as err:
                self.skipped.append((path, f"unreadable ({err.reason})"))
                continue
            kept.append((path, size))
        self.paths, self.sizes = [p for p, _ in kept], [s for _, s in kept]
        self._cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        """Image i as [3, H, W] float32 in [0, 1] (read, or taken from the cache)."""
        if self._cache is not None:
            x = self._cache[i]
            return x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return read_image(self.paths[i])[0][0]

    def report(self) -> str:
        """One line per skipped file, for logs."""
        return "\n".join(f"skipped {p}: {r}" for p, r in self.skipped)


def _to_storage(image: tuple[torch.Tensor, object]) -> torch.Tensor:
    """A decoded image [1, 3, H, W] as stored in the cache: uint8 for 8-bit files (exact), else float32."""
    x, info = image
    return torch.round(x[0] * 255).to(torch.uint8) if info.bits == 8 else x[0].clone()


def random_crop(x: torch.Tensor, size: int, rng: np.random.Generator, flips: bool = True) -> torch.Tensor:
    """A size×size crop of x [3, H, W] at a position drawn from rng, with random flips and transposition."""
    h, w = x.shape[-2:]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    crop = x[:, top:top + size, left:left + size]
    if flips:
        hflip, vflip, transpose = rng.integers(0, 2, 3)
        crop = dihedral(crop, int(hflip + 2 * vflip + 4 * transpose))
    return crop.contiguous()


class CropStream(Dataset):
    """Training crops: item k (the run's k-th sample) → (k, crop [3, size, size] float32 in [0, 1]).

    ``pool`` > 0 draws from a fixed set of ``pool`` crops (sample k is crop k mod pool), which lets a trainer
    cache per-crop work (the frozen IR net's outputs). The ids returned are the crop ids (k, or k mod pool).
    """

    def __init__(self, folder: ImageFolder, size: int, seed: int = 0, flips: bool = True, pool: int = 0):
        self.folder, self.size, self.seed, self.flips, self.pool = folder, int(size), int(seed), flips, int(pool)
        self._perm: tuple[int, list[int]] | None = None
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return 2**62  # an endless stream, indexed by the global sample number

    def _image_index(self, k: int) -> int:
        n = len(self.folder)
        epoch = k // n
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g).tolist())
        return self._perm[1][k % n]

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        crop_id = k % self.pool if self.pool else k
        rng = np.random.default_rng([self.seed, crop_id])
        i = self._image_index(crop_id)
        for attempt in range(len(self.folder)):
            j = (i + attempt) % len(self.folder)
            try:
                image = self.folder.load(j)
            except ImageReadError as err:  # only without the cache: truncated files show up on decoding
                if j not in self._warned:
                    self._warned.add(j)
                    warnings.warn(f"skipping {self.folder.paths[j]}: {err.reason}", stacklevel=2)
                continue
            return crop_id, random_crop(image, self.size, rng, self.flips)
        raise DatasetError(f"no image of {len(self.folder)} could be decoded")


def center_crops(folder: ImageFolder, size: int, limit: int | None = None) -> torch.Tensor:
    """Validation crops [N, 3, size, size]: the centre of each image (the first ``limit`` images)."""
    crops = []
    for i in range(len(folder) if limit is None else min(limit, len(folder))):
        x = folder.load(i)
        h, w = x.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        crops.append(x[:, top:top + size, left:left + size])
    return torch.stack(crops)


class StepBatches(Sampler):
    """Endless batches of sample numbers for one process: step s gives this rank's share of the global batch,
    [s·B + r·b, s·B + (r + 1)·b) with b = B / world, from ``start`` on."""

    def __init__(self, global_batch: int, rank: int = 0, world: int = 1, start: int = 0):
        if global_batch % world:
            raise ValueError(f"the batch size {global_batch} must be divisible by the {world} processes")
        self.B, self.b, self.rank, self.start = global_batch, global_batch // world, rank, start

    def __iter__(self):
        step = self.start
        while True:
            first = step * self.B + self.rank * self.b
            yield list(range(first, first + self.b))
            step += 1

    def __len__(self) -> int:
        return 2**62
