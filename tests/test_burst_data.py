"""Synthetic RAW bursts: packing round trips, camera pipeline, known transforms, burst files."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dpir_fast.data import (DEFAULT_CAMERA, Camera, linear_to_srgb, mosaic, pack_raw, random_camera, synthetic_burst,
                            unpack_raw, unprocess)
from dpir_fast.data.burst import PATTERNS, read_burst
from dpir_fast.data.images import ImageInfo, ImageReadError, write_image

PLANES = ((0, 0), (0, 1), (1, 0), (1, 1))  # RGGB cell positions of the packed planes R, Gr, Gb, B


@pytest.mark.parametrize("pattern", PATTERNS)
def test_packing_round_trips(pattern):
    mosaic_ = torch.rand(2, 3, 6, 10)
    packed = pack_raw(mosaic_, pattern)
    assert packed.shape == (2, 3, 4, 3, 5)
    assert torch.equal(unpack_raw(packed, pattern), mosaic_)
    assert torch.equal(pack_raw(unpack_raw(packed, pattern), pattern), packed)
    # plane 0 holds the red samples, plane 3 the blue ones, wherever the pattern puts them
    i, j = divmod(pattern.index("R"), 2)
    assert torch.equal(packed[..., 0, :, :], mosaic_[..., i::2, j::2])
    i, j = divmod(pattern.index("B"), 2)
    assert torch.equal(packed[..., 3, :, :], mosaic_[..., i::2, j::2])


def test_mosaic_samples_each_plane_from_its_colour():
    rgb = torch.rand(3, 8, 6)
    packed = mosaic(rgb)
    bayer = torch.stack([rgb[0], rgb[1], rgb[1], rgb[2]])  # what each RGGB site would see
    for p, (i, j) in enumerate(PLANES):
        assert torch.equal(packed[p], bayer[p, i::2, j::2])
    assert torch.equal(unpack_raw(packed)[0::2, 0::2], rgb[0, 0::2, 0::2])


def test_camera_pipeline_round_trips_and_meta():
    g = torch.Generator().manual_seed(0)
    camera = random_camera(g)
    assert 1.9 <= camera.red_gain <= 2.4 and 1.5 <= camera.blue_gain <= 1.9
    torch.testing.assert_close(camera.rgb2cam.sum(1), torch.ones(3))
    srgb = 0.1 + 0.6 * torch.rand(2, 3, 5, 7, generator=g)  # away from saturation and the clamps
    torch.testing.assert_close(linear_to_srgb(unprocess(srgb, camera), camera), srgb, atol=1e-5, rtol=0)
    meta = {"cam2rgb": camera.cam2rgb, "rgb_gain": camera.rgb_gain, "red_gain": camera.red_gain,
            "blue_gain": camera.blue_gain, "gamma": True, "smoothstep": True}  # DBSR meta_info
    linear = unprocess(srgb, camera)
    torch.testing.assert_close(linear_to_srgb(linear, meta), linear_to_srgb(linear, camera))
    torch.testing.assert_close(linear_to_srgb(linear, [camera, meta]), linear_to_srgb(linear, camera))
    out = linear_to_srgb(torch.rand(1, 3, 4, 4) * 2 - 0.5)
    assert out.min() >= 0 and out.max() <= 1
    assert isinstance(DEFAULT_CAMERA, Camera)


def _warp_back(burst, transforms, ds=4):
    """Resample every frame onto the base frame's packed grid through the known transforms (bilinear)."""
    n, _, h, w = burst.shape
    u, v = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    out = torch.empty_like(burst)
    for p, (ip, jp) in enumerate(PLANES):
        gt_point = torch.stack([ds * (2 * v + jp), ds * (2 * u + ip), torch.ones_like(u)], -1)  # base frame's site
        for i in range(n):
            d = gt_point @ transforms[i].T
            col = ((d[..., 0] - (ds - 1) / 2) / ds - jp) / 2
            row = ((d[..., 1] - (ds - 1) / 2) / ds - ip) / 2
            grid = torch.stack([2 * col / (w - 1) - 1, 2 * row / (h - 1) - 1], -1).float()
            out[i, p] = F.grid_sample(burst[i:i + 1, p:p + 1], grid[None], align_corners=True)[0, 0]
    return out


def test_frames_warped_back_match_the_base_frame_up_to_noise():
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    image = torch.stack([0.5 + 0.3 * torch.sin(2 * math.pi * (xx / 97 + yy / 131) + k) for k in range(3)])
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    rms = {}
    for noise in (False, True):
        sb = synthetic_burst(image, burst_size=4, max_translation=8.0, max_rotation=1.0, noise=noise,
                             generator=torch.Generator().manual_seed(0))
        assert sb.burst.shape == (4, 4, 16, 16) and sb.gt.shape == (3, 128, 128)
        assert sb.transforms.shape == (4, 2, 3)
        base = sb.burst[:1][inner]
        residual = _warp_back(sb.burst, sb.transforms)[1:][inner] - base
        rms[noise] = residual.pow(2).mean().sqrt().item()
        if not noise:
            misaligned = (sb.burst[1:][inner] - base).pow(2).mean().sqrt().item()
            assert rms[noise] < 0.15 * misaligned and residual.abs().max() < 0.02
        else:
            sigma = (base * sb.shot_noise + sb.read_noise).mean().sqrt().item()
            assert sigma > 1e-3 and rms[noise] < rms[False] + 1.5 * math.sqrt(2) * sigma
    # the base frame is centred on the gt grid: its un-mosaicked pixel (x', y') is gt pixel (4x', 4y'), seen
    # through the [1, 2, 1]/4 footprint of the bilinear ×1/4 resize (borders aside)
    sb = synthetic_burst(image, burst_size=2, noise=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sb.burst[0, 0, 1:, 1:], sb.gt[0, 8::8, 8::8], atol=1e-3, rtol=0)
    torch.testing.assert_close(sb.burst[0, 3], sb.gt[2, 4::8, 4::8], atol=1e-3, rtol=0)


def test_generator_is_seeded_and_checks_sizes():
    image = torch.rand(3, 48, 48)
    a = synthetic_burst(image, burst_size=3, border_crop=8, generator=torch.Generator().manual_seed(3))
    b = synthetic_burst(image, burst_size=3, border_crop=8, generator=torch.Generator().manual_seed(3))
    assert a.burst.shape == (3, 4, 4, 4) and a.gt.shape == (3, 32, 32)
    assert torch.equal(a.burst, b.burst) and torch.equal(a.transforms, b.transforms)
    with pytest.raises(ValueError, match="multiple"):
        synthetic_burst(torch.rand(3, 20, 24))


def test_read_burst_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    packed = torch.rand(3, 4, 5, 6, generator=g)
    npy, png, grey = tmp_path / "npy", tmp_path / "png", tmp_path / "grey"
    for d in (npy, png, grey):
        d.mkdir()
    for i, frame in enumerate(packed):
        np.save(npy / f"frame_{i:02d}.npy", frame.numpy())
        level = frame * 2 ** 14 / 65535  # SyntheticBurst files: 4-channel 16-bit PNGs with white level 2**14
        info = ImageInfo("PNG", "RGBA;16", 16, False, level[None, 3:])
        write_image(png / f"im_raw_{i:02d}.png", level[None, :3], info)
        mosaic16 = (unpack_raw(frame, "GRBG") * 65535).round().numpy().astype(np.uint16)
        Image.fromarray(mosaic16).save(grey / f"{i}.png")
    (npy / "notes.txt").write_text("ignored")
    assert torch.equal(read_burst(npy), packed[None])
    torch.testing.assert_close(read_burst(png, white_level=2 ** 14), packed[None], atol=1 / 2 ** 14, rtol=0)
    torch.testing.assert_close(read_burst(grey, "GRBG"), packed[None], atol=1 / 65535, rtol=0)
    np.save(npy / "frame_09.npy", np.zeros((4, 2, 2), np.float32))
    with pytest.raises(ImageReadError, match="differ in size"):
        read_burst(npy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no RAW frames"):
        read_burst(tmp_path / "empty")
