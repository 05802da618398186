"""RAW bursts: Bayer packing, the camera pipeline (sRGB <-> linear camera RGB) and synthetic bursts.

The synthetic bursts follow the DBSR protocol (Bhat et al., CVPR 2021), which BSRT and DP-IR train and
test on: an sRGB image is unprocessed to linear camera RGB ("Unprocessing images", Brooks et al. 2019:
inverse smoothstep tone curve, inverse gamma 2.2, RGB -> camera colour matrix, inverse white-balance and
brightness gains), each frame is warped by a random sub-pixel translation and rotation, downsampled ×4,
mosaicked RGGB and corrupted by shot + read noise. The ground truth is the full-size linear camera image;
BSRT predicts that space, so its output is brought to sRGB by :func:`linear_to_srgb` (gains, camera ->
RGB matrix, gamma 1/2.2, smoothstep, clamp: DBSR's ``process_linear_image_rgb``) before fusion.

Packed RAW: ``[..., 4, h, w]`` planes in the order R, G (red rows), G (blue rows), B, i.e. RGGB positions
(0, 0), (0, 1), (1, 0), (1, 1) of each 2×2 cell of the ``[..., 2h, 2w]`` mosaic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_XYZ2CAMS = torch.tensor([[[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
                          [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
                          [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
                          [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]]])
_RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])


# 1. Bayer packing --------------------------------------------------------------------------------
def _plane_positions(pattern: str) -> list[tuple[int, int]]:
    """Cell positions (row, col) of the R, G-in-red-row, G-in-blue-row and B samples of ``pattern``."""
    pattern = pattern.upper()
    if pattern not in PATTERNS:
        raise ValueError(f"Bayer pattern must be one of {PATTERNS}, got {pattern!r}")
    pos = {c: divmod(i, 2) for i, c in enumerate(pattern) if c != "G"}
    r, b = pos["R"], pos["B"]
    return [r, (r[0], 1 - r[1]), (b[0], 1 - b[1]), b]


def pack_raw(mosaic: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Bayer mosaic [..., 2h, 2w] -> packed planes [..., 4, h, w] (R, Gr, Gb, B)."""
    if mosaic.shape[-1] % 2 or mosaic.shape[-2] % 2:
        raise ValueError(f"a Bayer mosaic needs even height and width, got {tuple(mosaic.shape[-2:])}")
    return torch.stack([mosaic[..., i::2, j::2] for i, j in _plane_positions(pattern)], dim=-3)


def unpack_raw(packed: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Packed planes [..., 4, h, w] -> Bayer mosaic [..., 2h, 2w] (inverse of :func:`pack_raw`)."""
    if packed.shape[-3] != 4:
        raise ValueError(f"packed RAW needs 4 planes at dim -3, got shape {tuple(packed.shape)}")
    h, w = packed.shape[-2:]
    out = packed.new_empty(*packed.shape[:-3], 2 * h, 2 * w)
    for plane, (i, j) in enumerate(_plane_positions(pattern)):
        out[..., i::2, j::2] = packed[..., plane, :, :]
    return out


def mosaic(rgb: torch.Tensor) -> torch.Tensor:
    """RGB [..., 3, 2h, 2w] -> packed RGGB [..., 4, h, w], each plane sampled from its own colour."""
    r, g, b = rgb.unbind(-3)
    return torch.stack([r[..., 0::2, 0::2], g[..., 0::2, 1::2], g[..., 1::2, 0::2], b[..., 1::2, 1::2]], dim=-3)


# 2. Camera pipeline ------------------------------------------------------------------------------
@dataclass
class Camera:
    """The per-burst parameters of the (un)processing: RGB -> camera matrix, gains, tone steps."""

    rgb2cam: torch.Tensor = field(default_factory=lambda: torch.eye(3))
    rgb_gain: float = 1.0
    red_gain: float = 1.0
    blue_gain: float = 1.0
    gamma: bool = True
    smoothstep: bool = True

    @property
    def cam2rgb(self) -> torch.Tensor:
        return torch.linalg.inv(self.rgb2cam.double()).float()

    @classmethod
    def from_meta(cls, meta: dict) -> "Camera":
        """From a DBSR/BSRT ``meta_info`` dict (rgb2cam or cam2rgb, rgb/red/blue_gain, gamma, smoothstep)."""
        rgb2cam = meta.get("rgb2cam")
        if rgb2cam is None:
            rgb2cam = torch.linalg.inv(torch.as_tensor(meta["cam2rgb"], dtype=torch.float64))
        return cls(torch.as_tensor(rgb2cam, dtype=torch.float32), float(meta["rgb_gain"]), float(meta["red_gain"]),
                   float(meta["blue_gain"]), bool(meta.get("gamma", True)), bool(meta.get("smoothstep", True)))


def _normalised_rgb2cam(xyz2cam: torch.Tensor) -> torch.Tensor:
    rgb2cam = xyz2cam @ _RGB2XYZ
    return rgb2cam / rgb2cam.sum(dim=-1, keepdim=True)


# The centre of random_camera's distribution: equal CCM weights, mean gains. Used when a burst's own
# camera is not known (the CLI, users' RAW files).
DEFAULT_CAMERA = Camera(_normalised_rgb2cam(_XYZ2CAMS.mean(0)), 1.0 / 0.8, 2.15, 1.7)


def random_camera(generator: torch.Generator | None = None) -> Camera:
    """DBSR's random CCM (convex mix of 4 XYZ->camera matrices) and gains (rgb 1/N(0.8, 0.1), red U[1.9, 2.4],
    blue U[1.5, 1.9])."""
    u = torch.rand(6, generator=generator, dtype=torch.float64).float()
    weights = u[:4].view(4, 1, 1)
    rgb2cam = _normalised_rgb2cam((_XYZ2CAMS * weights).sum(0) / weights.sum())
    rgb_gain = 1.0 / (0.8 + 0.1 * float(torch.randn(1, generator=generator)))
    return Camera(rgb2cam, rgb_gain, 1.9 + 0.5 * float(u[4]), 1.5 + 0.4 * float(u[5]))


def _apply_ccm(image: torch.Tensor, ccm: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", ccm.to(image), image)


def _gains(camera: Camera, image: torch.Tensor) -> torch.Tensor:
    return torch.tensor([camera.red_gain, 1.0, camera.blue_gain]).to(image).view(3, 1, 1) * camera.rgb_gain


def unprocess(srgb: torch.Tensor, camera: Camera) -> torch.Tensor:
    """sRGB [..., 3, H, W] in [0, 1] -> linear camera RGB (DBSR ``rgb2rawburst`` before the burst), clamped."""
    x = srgb.clamp(0.0, 1.0)
    if camera.smoothstep:
        x = 0.5 - torch.sin(torch.asin(1.0 - 2.0 * x) / 3.0)
    if camera.gamma:
        x = x.clamp_min(1e-8) ** 2.2
    x = _apply_ccm(x, camera.rgb2cam)
    gains = 1.0 / _gains(camera, x)
    # Saturated (near-white) pixels keep their brightness: the inverse gain fades out above grey 0.9.
    fade = ((x.mean(dim=-3, keepdim=True) - 0.9).clamp_min(0.0) / 0.1) ** 2
    return (x * torch.maximum(fade + (1.0 - fade) * gains, gains)).clamp(0.0, 1.0)


def linear_to_srgb(linear: torch.Tensor, camera: Camera | dict | list | None = None) -> torch.Tensor:
    """Linear camera RGB [B, 3, H, W] (or [3, H, W]) -> sRGB in [0, 1] (DBSR ``process_linear_image_rgb``).

    ``camera``: a :class:`Camera`, a DBSR ``meta_info`` dict, a list of either (one per image), or None for
    :data:`DEFAULT_CAMERA`.
    """
    if isinstance(camera, (list, tuple)):
        if linear.dim() != 4 or len(camera) != linear.shape[0]:
            raise ValueError(f"got {len(camera)} cameras for images of shape {tuple(linear.shape)}")
        return torch.stack([linear_to_srgb(x, c) for x, c in zip(linear, camera)])
    camera = Camera.from_meta(camera) if isinstance(camera, dict) else (camera or DEFAULT_CAMERA)
    x = (linear * _gains(camera, linear)).clamp(0.0, 1.0)
    x = _apply_ccm(x, camera.cam2rgb)
    if camera.gamma:
        x = x.clamp_min(1e-8) ** (1.0 / 2.2)
    if camera.smoothstep:
        x = 3 * x ** 2 - 2 * x ** 3
    return x.clamp(0.0, 1.0)


# 3. Synthetic bursts -----------------------------------------------------------------------------
@dataclass
class SyntheticBurst:
    """One synthetic burst and what made it.

    burst: [N, 4, h, w] packed RGGB RAW in [0, 1], frame 0 the base frame.
    gt: [3, 2·ds·h, 2·ds·w] linear camera RGB, the target (ds = the downsampling factor).
    transforms: [N, 2, 3] affine maps A_i in gt pixel coordinates (x = column, pixel centres at integers):
        pixel (x', y') of frame i's un-mosaicked [3, 2h, 2w] image samples the gt at
        A_i⁻¹·(ds·x' + (ds−1)/2, ds·y' + (ds−1)/2); A_0 is the translation by (ds−1)/2, so the base
        frame's pixel (x', y') sits on gt pixel (ds·x', ds·y'). Plane p of packed pixel (u, v) is
        un-mosaicked pixel (2u + i_p, 2v + j_p), (i_p, j_p) = (0, 0), (0, 1), (1, 0), (1, 1).
    """

    burst: torch.Tensor
    gt: torch.Tensor
    transforms: torch.Tensor
    camera: Camera
    shot_noise: float
    read_noise: float


def random_noise_levels(generator: torch.Generator | None = None) -> tuple[float, float]:
    """DBSR's (shot, read) noise: log shot U[log 1e-4, log 0.012], log read = 2.18·log shot + 1.2 + N(0, 0.26)."""
    u, z = float(torch.rand(1, generator=generator)), float(torch.randn(1, generator=generator))
    log_shot = math.log(1e-4) + u * (math.log(0.012) - math.log(1e-4))
    return math.exp(log_shot), math.exp(2.18 * log_shot + 1.20 + 0.26 * z)


def add_noise(raw: torch.Tensor, shot: float, read: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """raw + N(0, raw·shot + read), heteroscedastic shot + read noise."""
    z = torch.randn(raw.shape, generator=generator, dtype=raw.dtype)
    return raw + z.to(raw.device) * (raw * shot + read).clamp_min(0.0).sqrt()


def _affine(tx: float, ty: float, theta_deg: float, size: tuple[int, int]) -> torch.Tensor:
    """Translate by (tx, ty), then rotate by theta (degrees) about the image centre: [3, 3] float64."""
    h, w = size
    t = torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]], dtype=torch.float64)
    a, b = math.cos(math.radians(theta_deg)), math.sin(math.radians(theta_deg))
    cx, cy = 0.5 * w, 0.5 * h
    r = torch.tensor([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    return r @ t


def _warp(image: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """out(p) = image(mat⁻¹ p), bilinear, zeros outside; image [C, H, W], mat [3, 3] (pixel coordinates)."""
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    src = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(mat).T
    grid = torch.stack([2 * src[..., 0] / (w - 1) - 1, 2 * src[..., 1] / (h - 1) - 1], -1).to(image)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def _downsample(image: torch.Tensor, ds: int) -> torch.Tensor:
    """Bilinear sampling at ds·x' + (ds−1)/2 (OpenCV's INTER_LINEAR resize by 1/ds, as DBSR uses)."""
    c = (ds - 1) / 2
    lo, frac = math.floor(c), c - math.floor(c)
    for dim in (-2, -1):
        idx = torch.arange(image.shape[dim] // ds, device=image.device) * ds + lo
        out = image.index_select(dim, idx)
        if frac:
            out = (1 - frac) * out + frac * image.index_select(dim, idx + 1)
        image = out
    return image


def synthetic_burst(image: torch.Tensor, burst_size: int = 14, downsample: int = 4, max_translation: float = 24.0,
                    max_rotation: float = 1.0, border_crop: int = 0, noise: bool = True, camera: Camera | None = None,
                    generator: torch.Generator | None = None) -> SyntheticBurst:
    """A DBSR-style RAW burst from one sRGB image [3, H, W] in [0, 1].

    Frame i > 0 is translated by U[−max_translation, max_translation] gt pixels per axis and rotated by
    U[−max_rotation, max_rotation] degrees about the centre; every frame is then cropped by
    ``border_crop`` gt pixels a side, downsampled by ``downsample``, mosaicked RGGB and noised
    (:func:`random_noise_levels`; ``noise=False`` for none). ``camera`` defaults to
    :func:`random_camera`. H − 2·border_crop and W − 2·border_crop must be multiples of 2·downsample.
    DBSR's defaults for training are max_translation 24, max_rotation 1, border_crop 24, downsample 4.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"synthetic_burst takes one sRGB image [3, H, W], got shape {tuple(image.shape)}")
    b, ds = border_crop, downsample
    size = image.shape[-2:]
    if any((n - 2 * b) % (2 * ds) or n - 2 * b <= 0 for n in size):
        raise ValueError(f"image size {tuple(size)} minus 2·border_crop ({2 * b}) must be a positive multiple "
                         f"of 2·downsample ({2 * ds})")
    camera = camera or random_camera(generator)
    linear = unprocess(image.float(), camera)
    centre = (ds - 1) / 2
    frames, transforms = [], []
    for i in range(burst_size):
        tx, ty, theta = centre, centre, 0.0
        if i > 0:
            limits = torch.tensor([max_translation, max_translation, max_rotation], dtype=torch.float64)
            tx, ty, theta = ((2 * torch.rand(3, generator=generator, dtype=torch.float64) - 1) * limits).tolist()
        mat = _affine(tx, ty, theta, size)
        warped = _warp(linear, mat)[:, b:size[0] - b, b:size[1] - b]
        frames.append(mosaic(_downsample(warped, ds)))
        shift = torch.tensor([[1.0, 0.0, b], [0.0, 1.0, b], [0.0, 0.0, 1.0]], dtype=torch.float64)
        transforms.append((torch.linalg.inv(shift) @ mat @ shift)[:2])  # in the cropped (gt) coordinates
    burst = torch.stack(frames)
    shot = read = 0.0
    if noise:
        shot, read = random_noise_levels(generator)
        burst = add_noise(burst, shot, read, generator)
    return SyntheticBurst(burst.clamp(0.0, 1.0), linear[:, b:size[0] - b, b:size[1] - b], torch.stack(transforms),
                          camera, shot, read)


# 4. Burst files ----------------------------------------------------------------------------------
BURST_SUFFIXES = frozenset({".npy", ".png", ".tif", ".tiff"})


def _read_frame(path, pattern: str, white_level: float | None) -> torch.Tensor:
    """One RAW frame file -> packed [4, h, w] float32 in [0, 1]."""
    from .images import ImageReadError, read_image
    if path.suffix.lower() == ".npy":
        import numpy as np
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ImageReadError(path, f"not a readable .npy array ({err})") from err
        if arr.dtype.kind in "iu":
            level = white_level or float(np.iinfo(arr.dtype).max)
        elif arr.dtype.kind == "f":
            level = white_level or 1.0
        else:
            raise ImageReadError(path, f"array of dtype {arr.dtype}; RAW frames are integer or float")
        x = torch.from_numpy(arr.astype(np.float32)) / level
    else:
        x, info = read_image(path)
        if info.gray:
            planes = x[0, :1]
        else:
            planes = x[0] if info.alpha is None else torch.cat([x[0], info.alpha[0]])
        if planes.shape[0] not in (1, 4):
            raise ImageReadError(path, "a RAW frame image is a grey Bayer mosaic or a 4-channel packed image")
        x = planes[0] if planes.shape[0] == 1 else planes
        if white_level:
            x = x * ((2 ** info.bits - 1) / white_level)
    if x.dim() == 2:
        if x.shape[0] % 2 or x.shape[1] % 2:
            raise ImageReadError(path, f"a Bayer mosaic needs even sides, got {tuple(x.shape)}")
        x = pack_raw(x, pattern)
    if x.dim() != 3 or x.shape[0] != 4:
        raise ImageReadError(path, f"a RAW frame is [4, h, w] (packed) or [H, W] (mosaic), got {tuple(x.shape)}")
    return x.clamp(0.0, 1.0)


def read_burst(folder, pattern: str = "RGGB", white_level: float | None = None) -> torch.Tensor:
    """A folder of RAW frames -> burst [1, N, 4, h, w] float32 in [0, 1], frames sorted by file name.

    Frame files (BURST_SUFFIXES; others are ignored): ``.npy`` arrays [4, h, w] (packed R, Gr, Gb, B) or
    [H, W] (a Bayer mosaic in ``pattern``); PNG/TIFF images, grey (a mosaic) or 4-channel (packed, as in
    the SyntheticBurst validation set). Integer samples are divided by ``white_level`` (default: the
    format's maximum, 65535 for 16 bits; the SyntheticBurst files need 2**14); float arrays are taken as
    [0, 1] unless ``white_level`` is given. The first frame by name is the base frame.
    """
    from pathlib import Path

    from .images import ImageReadError
    folder = Path(folder)
    files = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in BURST_SUFFIXES
                    and not f.name.startswith(".")), key=lambda f: f.name)
    if not files:
        raise ImageReadError(folder, f"no RAW frames ({', '.join(sorted(BURST_SUFFIXES))}) in this folder")
    frames = [_read_frame(f, pattern, white_level) for f in files]
    if any(f.shape != frames[0].shape for f in frames):
        raise ImageReadError(folder, "the frames differ in size: " + ", ".join(
            f"{f.name} {tuple(x.shape[-2:])}" for f, x in zip(files, frames)))
    return torch.stack(frames)[None]
