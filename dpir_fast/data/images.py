"""Image files in and out of the networks.

Rules (the CLI help repeats them):

- Read: whatever Pillow reads (PNG, JPEG, TIFF, BMP, WebP, GIF, PNM, ...), returned as a float32 tensor
  [1, 3, H, W] in [0, 1]. 8-bit samples are divided by 255, 16-bit samples by 65535. Pillow keeps 16-bit grey
  ('I;16*'; 'I' is clipped to 0..65535); 16-bit colour PNG/TIFF, which Pillow would cut to 8 bits, are read at
  full 16-bit precision by decoding the file twice through Pillow (high bytes, then low bytes). Float ('F')
  images are clipped to [0, 1] and written back as 16-bit.
- Grey (and 1-bit) images are replicated to 3 channels; they are written back as grey, the mean of the 3 output
  channels. Palette images become RGB, or RGBA when they have transparency, and are written as such.
  CMYK/YCbCr/LAB/HSV become RGB.
- Alpha: split off, kept as a [1, 1, H, W] plane, resized (bicubic, clamped) to the output size and re-attached on
  write. Formats without alpha (JPEG, BMP) drop it.
- The EXIF orientation is applied on read (the pixels are turned upright); no EXIF is written back. The ICC
  profile is kept for 8-bit outputs of RGB/grey inputs.
- Write: the format comes from `fmt` (png, jpg, tif, bmp, webp), else from the file suffix, else the input's
  format, else PNG. Bit depth: the input's where the format allows it (16 bits for PNG and TIFF), else 8.
  JPEG and WebP are written at quality 95 (JPEG without chroma subsampling). 16-bit grey goes through Pillow
  ('I;16'); 16-bit colour and 16-bit grey+alpha, which Pillow cannot write, go through our own small encoders:
  PNG (deflate, Sub filter) and uncompressed little-endian TIFF (grey+alpha as RGBA there).
- A file that cannot be read raises ImageReadError (a ValueError) naming the file and the reason.
- find_images: folders expand to the files with an image suffix (IMAGE_SUFFIXES), sorted by name, recursively
  only when asked; other files found in folders come back in a separate "ignored" list; files named directly are
  always kept (and fail in read_image when they are not images).
"""

from __future__ import annotations

import io
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageInfo", "ImageReadError", "IMAGE_SUFFIXES", "read_image", "write_image", "find_images",
           "output_suffix"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".dib", ".webp",
                            ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi"})
_SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
                  ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}
_FMT_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP",
               "webp": "WEBP"}
_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
_ALPHA_FORMATS = {"PNG", "TIFF", "WEBP"}
_WIDE_FORMATS = {"PNG", "TIFF"}
_KEEP_ICC = {"L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageReadError(ValueError):
    """A file that is missing, corrupt, truncated or not an image."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot read image: {reason}")


@dataclass
class ImageInfo:
    """What write_image needs to write a result back like its input."""

    format: str  # Pillow format of the input file ("PNG", "JPEG", "TIFF", ...)
    mode: str  # input mode as stored: a Pillow mode, or "RGB;16" / "RGBA;16" / "LA;16"
    bits: int  # 8 or 16 bits per sample
    gray: bool  # one colour channel: written back as grey
    alpha: torch.Tensor | None = None  # [1, 1, H, W] float32 in [0, 1]
    icc_profile: bytes | None = None


def read_image(path) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image file as x [1, 3, H, W] float32 in [0, 1] (upright) plus its ImageInfo."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from e
    try:
        arr, info = _decode(data)
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image, or a format Pillow cannot read") from e
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, struct.error,
            zlib.error, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None]  # [1, C, H, W]
    if x.shape[1] in (2, 4):
        info.alpha, x = x[:, -1:].clone(), x[:, :-1]
    if info.gray:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous(), info


def _decode(data: bytes) -> tuple[np.ndarray, ImageInfo]:
    """Pixels [H, W, C] float32 in [0, 1] (C = 1..4, alpha last) and the ImageInfo of an encoded file."""
    # Open from memory, never by file name: Pillow 13 maps uncompressed files by name and then ignores the TIFF
    # orientation swap of width and height (scrambled pixels for orientations 5-8).
    im = Image.open(io.BytesIO(data))
    fmt, icc = im.format or "PNG", im.info.get("icc_profile")
    rawmode = _rawmode(im)
    if rawmode and rawmode[:-1] in ("RGB;16", "RGBA;16", "RGBX;16", "LA;16"):
        wide = _read_wide(data, rawmode)
        mode = rawmode[:-1].replace("RGBX", "RGB")
        if mode == "RGB;16":
            wide = wide[..., :3]
        info = ImageInfo(fmt, mode, 16, mode == "LA;16", icc_profile=icc)
        return wide.astype(np.float32) / 65535.0, info
    im.load()
    mode, transparent = im.mode, "transparency" in im.info
    im = ImageOps.exif_transpose(im)
    info = ImageInfo(fmt, mode, 8, False, icc_profile=icc if mode in _KEEP_ICC else None)
    if mode.startswith("I;16") or mode == "I":
        info.bits, info.gray = 16, True
        return np.clip(np.asarray(im, dtype=np.float32), 0, 65535)[..., None] / 65535.0, info
    if mode == "F":
        info.bits, info.gray = 16, True
        return np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None], info
    if mode == "P":
        target = "RGBA" if transparent else "RGB"
    else:
        target = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA",
                  "RGBa": "RGBA"}.get(mode, "RGB")
    if im.mode != target:
        im = im.convert(target)
    info.gray = target in ("L", "LA")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return (arr[..., None] if arr.ndim == 2 else arr), info


def _rawmode(im: Image.Image) -> str | None:
    """The raw mode of the first tile (str for PNG, first argument for TIFF codecs), or None."""
    if not im.tile:
        return None
    args = im.tile[0].args
    raw = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else None)
    return raw


def _with_rawmode(data: bytes, rawmode: str) -> np.ndarray:
    """Decode `data` with every tile's raw mode replaced by `rawmode`; uint8 [H, W, C], upright."""
    im = Image.open(io.BytesIO(data))
    im.tile = [t._replace(args=rawmode if isinstance(t.args, str) else (rawmode, *t.args[1:])) for t in im.tile]
    im.load()
    return np.asarray(ImageOps.exif_transpose(im))


def _read_wide(data: bytes, rawmode: str) -> np.ndarray:
    """uint16 [H, W, C] of a 16-bit colour or grey+alpha file, which Pillow alone reads as 8 bits."""
    order = rawmode[-1]
    big = order == "B" or (order == "N" and sys.byteorder == "big")
    if rawmode.startswith("LA;16"):  # 4 bytes a pixel: the 8-bit RGBA unpacker hands them over unchanged
        b = _with_rawmode(data, "RGBA").astype(np.uint16)
        hi, lo = (b[..., 0::2], b[..., 1::2]) if big else (b[..., 1::2], b[..., 0::2])
        return hi << 8 | lo
    hi = _with_rawmode(data, rawmode)  # Pillow's own 16 -> 8 bit unpacking keeps the high byte
    try:
        lo = _with_rawmode(data, rawmode[:-1] + ("L" if big else "B"))  # the same unpacking, bytes swapped
    except (ValueError, OSError) as e:
        warnings.warn(f"16-bit image read at 8-bit precision (Pillow cannot unpack its low bytes: {e})",
                      stacklevel=3)
        return hi.astype(np.uint16) * 257
    return hi.astype(np.uint16) << 8 | lo


def output_suffix(path, fmt: str | None = None) -> str:
    """Suffix of the output written for input `path`: fmt's, else the input's when writable, else '.png'."""
    if fmt:
        return _FORMAT_SUFFIX[_format_of(fmt)]
    suffix = Path(path).suffix
    return suffix if suffix.lower() in _SUFFIX_FORMAT else ".png"


def _format_of(fmt: str) -> str:
    try:
        return _FMT_FORMAT[fmt.lower().lstrip(".")]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; use one of png, jpg, tif, bmp, webp") from None


def write_image(path, image: torch.Tensor, info: ImageInfo, fmt: str | None = None) -> Path:
    """Write image [1, 3, H, W] or [3, H, W] (float, [0, 1]) like the input described by `info`; returns path."""
    path = Path(path)
    x = image[0] if image.dim() == 4 else image
    if image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1) or x.shape[0] != 3:
        raise ValueError(f"write_image expects [1, 3, H, W] or [3, H, W], got {list(image.shape)}")
    x = x.detach().to("cpu", torch.float32).clamp(0, 1)
    if fmt:
        format = _format_of(fmt)
    else:
        format = _SUFFIX_FORMAT.get(path.suffix.lower()) or (info.format if info.format in _FORMAT_SUFFIX else "PNG")
    bits = info.bits if format in _WIDE_FORMATS else 8
    planes = [x.mean(0, keepdim=True)] if info.gray else [x]
    if info.alpha is not None and format in _ALPHA_FORMATS:
        a = info.alpha.to("cpu", torch.float32)
        if a.shape[-2:] != x.shape[-2:]:
            a = F.interpolate(a, size=x.shape[-2:], mode="bicubic", align_corners=False)
        planes.append(a[0].clamp(0, 1))
    maxval = 65535 if bits == 16 else 255
    q = torch.cat(planes).permute(1, 2, 0).mul(maxval).round_().numpy()
    q = np.ascontiguousarray(q, dtype=np.uint16 if bits == 16 else np.uint8)  # [H, W, C]
    if bits == 16 and q.shape[-1] > 1:
        path.write_bytes(_encode_png16(q) if format == "PNG" else _encode_tiff16(q))
        return path
    im = Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q)  # L, LA, RGB, RGBA or I;16
    options = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}.get(format, {})
    if info.icc_profile and bits == 8 and format != "BMP":
        options["icc_profile"] = info.icc_profile
    im.save(path, format=format, **options)
    return path


def _encode_png16(q: np.ndarray) -> bytes:
    """PNG bytes of q uint16 [H, W, C] (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), every row Sub-filtered."""
    h, w, c = q.shape
    rows = np.ascontiguousarray(q, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    bpp = 2 * c
    filtered = rows.copy()
    filtered[:, bpp:] -= rows[:, :-bpp]  # uint8 wraps modulo 256, as the Sub filter wants
    body = np.concatenate([np.ones((h, 1), np.uint8), filtered], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body, 6)) + chunk(b"IEND", b""))


def _encode_tiff16(q: np.ndarray) -> bytes:
    """Uncompressed little-endian TIFF bytes of q uint16 [H, W, C]; grey+alpha is written as RGBA."""
    if q.shape[-1] == 2:
        q = np.concatenate([q[..., :1].repeat(3, -1), q[..., 1:]], axis=-1)
    h, w, c = q.shape
    pixels = q.astype("<u2").tobytes()
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, c, None), (259, 3, 1, 1), (262, 3, 1, 2 if c >= 3 else 1),
            (273, 4, 1, None), (277, 3, 1, c), (278, 4, 1, h), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    if c == 4:
        tags.append((338, 3, 1, 2))  # ExtraSamples: unassociated alpha
    ifd_at = 8
    bps_at = ifd_at + 2 + 12 * len(tags) + 4
    bps = struct.pack(f"<{c}H", *[16] * c)
    pixels_at = bps_at + (len(bps) if c > 2 else 0)
    out = [b"II*\x00", struct.pack("<IH", ifd_at, len(tags))]
    for tag, kind, count, value in tags:
        if tag == 258:
            field = struct.pack("<I", bps_at) if c > 2 else bps.ljust(4, b"\0")
        elif tag == 273:
            field = struct.pack("<I", pixels_at)
        else:
            field = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out.append(struct.pack("<HHI", tag, kind, count) + field)
    out += [struct.pack("<I", 0), bps if c > 2 else b"", pixels]
    return b"".join(out)


def find_images(paths, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into (images, ignored).

    Folders give their files with an IMAGE_SUFFIXES suffix, sorted by name (all levels when `recursive`); their
    other files (hidden ones aside) go to `ignored`. Files named directly are kept whatever their suffix. A path
    seen twice is kept once. A missing path raises FileNotFoundError.
    """
    images: list[Path] = []
    ignored: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*") if recursive else p.iterdir(), key=lambda f: f.as_posix())
            for f in found:
                if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                    continue
                (images if f.suffix.lower() in IMAGE_SUFFIXES else ignored).append(f)
        elif p.exists():
            images.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    unique = []
    for f in images:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, ignored
