"""Image files in and out: bit depths, modes, alpha, orientation, broken files, folder expansion."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dpir_fast.data.images import ImageInfo, ImageReadError, find_images, output_suffix, read_image, write_image

RNG = np.random.default_rng(0)


def _u8(*shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(*shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def _plain_png16(q: np.ndarray) -> bytes:
    """A 16-bit PNG written independently of the package (filter 0 on every row)."""
    h, w, c = q.shape
    body = b"".join(b"\0" + row.astype(">u2").tobytes() for row in q)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy()


def test_rgb8_png_round_trip_exact(tmp_path):
    a = _u8(9, 13, 3)
    Image.fromarray(a).save(tmp_path / "in.png")
    x, info = read_image(tmp_path / "in.png")
    assert x.shape == (1, 3, 9, 13) and x.dtype == torch.float32
    assert (info.format, info.mode, info.bits, info.gray, info.alpha) == ("PNG", "RGB", 8, False, None)
    write_image(tmp_path / "out.png", x, info)
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), a)


def test_gray16_png_round_trip(tmp_path):
    g = _u16(7, 11)
    Image.fromarray(g).save(tmp_path / "in.png")
    x, info = read_image(tmp_path / "in.png")
    assert info.bits == 16 and info.gray and x.shape == (1, 3, 7, 11)
    assert torch.equal(x[0, 0], x[0, 2]) and np.abs(x[0, 0].numpy() * 65535 - g).max() < 1e-2
    write_image(tmp_path / "out.png", x, info)
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "I;16" and np.array_equal(np.asarray(out), g)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_colour16_png_read_at_full_precision(tmp_path, channels):
    q = _u16(6, 9, channels)
    (tmp_path / "in.png").write_bytes(_plain_png16(q))
    x, info = read_image(tmp_path / "in.png")
    assert info.bits == 16 and info.gray == (channels == 2) and (info.alpha is not None) == (channels in (2, 4))
    planes = [x[:, :1] if channels == 2 else x] + ([info.alpha] if info.alpha is not None else [])
    got = np.round(_hwc(torch.cat(planes, 1)) * 65535)
    assert np.array_equal(got, q)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_rgb16_write_round_trip(tmp_path, suffix):
    q = _u16(6, 9, 3)
    x = torch.from_numpy(q.astype(np.float32) / 65535).permute(2, 0, 1)[None]
    write_image(tmp_path / f"out{suffix}", x, ImageInfo("PNG", "RGB;16", 16, False))
    assert np.array_equal(np.asarray(Image.open(tmp_path / f"out{suffix}")), q >> 8)  # Pillow's own 8-bit view
    y, info = read_image(tmp_path / f"out{suffix}")
    assert info.bits == 16 and info.format == ("PNG" if suffix == ".png" else "TIFF")
    assert (y - x).abs().max() <= 0.5 / 65535


def test_gray_in_gray_out(tmp_path):
    Image.fromarray(_u8(8, 8)).save(tmp_path / "in.png")
    x, info = read_image(tmp_path / "in.png")
    assert info.gray and info.mode == "L" and torch.equal(x[:, 0], x[:, 1])
    y = torch.stack([torch.full((8, 8), 0.2), torch.full((8, 8), 0.4), torch.full((8, 8), 0.6)])
    write_image(tmp_path / "out.png", y, info)
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "L" and (np.asarray(out) == 102).all()  # mean 0.4 -> round(102.0)


def test_rgba_keeps_alpha_resized(tmp_path):
    a = _u8(8, 10, 4)
    a[..., 3] = 0
    a[:, 5:, 3] = 255
    Image.fromarray(a).save(tmp_path / "in.png")
    x, info = read_image(tmp_path / "in.png")
    assert x.shape == (1, 3, 8, 10) and info.alpha.shape == (1, 1, 8, 10)
    write_image(tmp_path / "same.png", x, info)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png")), a)
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    write_image(tmp_path / "up.png", up, info)
    out = np.asarray(Image.open(tmp_path / "up.png"))
    assert out.shape == (16, 20, 4)
    assert (out[:, :7, 3] == 0).all() and (out[:, 13:, 3] == 255).all() and 0 < out[0, 10, 3] < 255
    write_image(tmp_path / "flat.jpg", up, info)  # JPEG has no alpha
    assert Image.open(tmp_path / "flat.jpg").mode == "RGB"


def test_jpeg_reads_and_writes_jpeg(tmp_path):
    a = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(a).save(tmp_path / "in.jpg", quality=95)
    x, info = read_image(tmp_path / "in.jpg")
    assert info.format == "JPEG" and x.shape == (1, 3, 16, 16)
    assert (x[0, :, 8, 8] * 255 - torch.tensor([200.0, 100, 50])).abs().max() < 4
    write_image(tmp_path / "out.jpg", x, info)
    assert Image.open(tmp_path / "out.jpg").format == "JPEG"


def test_tiff_read_write(tmp_path):
    a = _u8(7, 9, 3)
    Image.fromarray(a).save(tmp_path / "in.tif")
    x, info = read_image(tmp_path / "in.tif")
    assert info.format == "TIFF" and info.bits == 8
    write_image(tmp_path / "out.tiff", x, info)
    out = Image.open(tmp_path / "out.tiff")
    assert out.format == "TIFF" and np.array_equal(np.asarray(out), a)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(tmp_path, transparent):
    im = Image.fromarray(_u8(8, 8, 3)).quantize(16)
    if transparent:
        im.info["transparency"] = 0
    im.save(tmp_path / "in.png", **({"transparency": 0} if transparent else {}))
    x, info = read_image(tmp_path / "in.png")
    expect = np.asarray(Image.open(tmp_path / "in.png").convert("RGBA" if transparent else "RGB"))
    assert info.mode == "P" and (info.alpha is not None) == transparent
    assert np.array_equal(np.round(_hwc(x) * 255), expect[..., :3])
    write_image(tmp_path / "out.png", x, info)
    assert Image.open(tmp_path / "out.png").mode == ("RGBA" if transparent else "RGB")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_exif_orientation_applied(tmp_path, suffix):
    a = _u8(5, 7, 3)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / f"in{suffix}", exif=exif.tobytes())
    x, _ = read_image(tmp_path / f"in{suffix}")
    assert np.array_equal(np.round(_hwc(x) * 255), np.rot90(a, -1))


def test_broken_files_raise_image_read_error(tmp_path):
    (tmp_path / "noise.png").write_bytes(RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    Image.fromarray(_u8(64, 64, 3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("noise.png", "cut.png", "notes.txt", "missing.png"):
        with pytest.raises(ImageReadError, match=name) as err:
            read_image(tmp_path / name)
        assert isinstance(err.value, ValueError) and err.value.reason


def test_write_checks_shape_and_format(tmp_path):
    info = ImageInfo("PNG", "RGB", 8, False)
    with pytest.raises(ValueError, match="1, 3, H, W"):
        write_image(tmp_path / "x.png", torch.zeros(2, 3, 4, 4), info)
    with pytest.raises(ValueError, match="unknown output format"):
        write_image(tmp_path / "x.png", torch.zeros(3, 4, 4), info, fmt="gif")
    write_image(tmp_path / "x.png", torch.zeros(3, 4, 4), ImageInfo("TIFF", "I;16", 16, True), fmt="jpg")
    assert Image.open(tmp_path / "x.png").format == "JPEG"  # fmt wins over the suffix; JPEG is 8-bit grey
    assert output_suffix("a/b.JPG") == ".JPG" and output_suffix("b.gif") == ".png"
    assert output_suffix("b.png", "tif") == ".tif"


def test_find_images(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt", ".hidden.png", "sub/c.tif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    images, ignored = find_images([tmp_path])
    assert [p.name for p in images] == ["a.jpg", "b.png"] and [p.name for p in ignored] == ["notes.txt"]
    images, _ = find_images([tmp_path, tmp_path / "b.png", tmp_path / "notes.txt"], recursive=True)
    assert [p.name for p in images] == ["a.jpg", "b.png", "c.tif", "notes.txt"]
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([tmp_path / "nope"])
