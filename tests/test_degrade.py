"""MATLAB-compatible bicubic imresize: a hand-computed case, constants, and a slow direct implementation."""
import math

import pytest
import torch

from dpir_fast.data.degrade import (JFIF_LUMA, bicubic_downsample, cubic, imresize, quantize, resize_matrix,
                                    subsample_chroma)


def test_hand_computed_halving():
    # imresize([1 2 3 4], 0.5): the kernel is 0.5·cubic(0.5·x), 8 wide; output 1 sits at u = 1.5. Its taps at
    # j = -2..5 have cubic(±0.25) = 0.8671875, cubic(±0.75) = 0.2265625, cubic(±1.25) = -0.0703125,
    # cubic(±1.75) = -0.0234375 (sum 2); mirrored indices -2..0 -> 3, 2, 1 and 5 -> 4 give
    # 0.546875·v1 + 0.3984375·v2 + 0.1015625·v3 − 0.046875·v4.
    expected_row = torch.tensor([0.546875, 0.3984375, 0.1015625, -0.046875], dtype=torch.float64)
    m = resize_matrix(4, 2, 0.5)
    assert torch.equal(m[0], expected_row)
    assert torch.equal(m[1], expected_row.flip(0))
    out = imresize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), scale=(1, 0.5))
    assert torch.allclose(out, torch.tensor([[1.4609375, 3.5390625]], dtype=torch.float64), atol=1e-15)


def test_cubic_kernel_values():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], dtype=torch.float64)
    assert torch.allclose(cubic(x), torch.tensor([1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("scale", [0.25, 0.3, 0.5, 2.0, 3.0])
def test_constant_image_stays_constant(scale):
    x = torch.full((2, 3, 17, 23), 0.37, dtype=torch.float64)
    out = imresize(x, scale)
    assert out.shape == (2, 3, math.ceil(17 * scale), math.ceil(23 * scale))
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-14)


def _direct(x: list[list[float]], out_h: int, out_w: int) -> list[list[float]]:
    """MATLAB imresize, bicubic with antialiasing, one output pixel at a time in plain Python."""
    def k(t):
        t = abs(t)
        return 1.5 * t**3 - 2.5 * t**2 + 1 if t <= 1 else (-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0.0)

    def taps(n_in, n_out, i):
        s = n_out / n_in
        h, width = (lambda t: s * k(s * t), 4 / s) if s < 1 else (k, 4.0)
        u = (i + 1) / s + 0.5 * (1 - 1 / s)
        first = math.floor(u - width / 2)
        js = range(first, first + math.ceil(width) + 2)
        w = [h(u - j) for j in js]
        total = sum(w)
        mirror = lambda j: (j - 1) % (2 * n_in) if (j - 1) % (2 * n_in) < n_in else 2 * n_in - 1 - (j - 1) % (2 * n_in)  # noqa: E731
        return [(mirror(j), wj / total) for j, wj in zip(js, w)]

    H, W = len(x), len(x[0])
    out = []
    for i in range(out_h):
        row = []
        for j in range(out_w):
            row.append(sum(wr * wc * x[r][c] for r, wr in taps(H, out_h, i) for c, wc in taps(W, out_w, j)))
        out.append(row)
    return out


@pytest.mark.parametrize("size", [(3, 4), (5, 7), (26, 34), (9, 20)])
def test_matches_direct_implementation(size):
    x = torch.rand(13, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor(_direct(x.tolist(), *size), dtype=torch.float64)
    assert torch.allclose(imresize(x, size=size), expected, atol=1e-12)


def test_bicubic_downsample_rounds_and_checks_size():
    x = torch.rand(2, 3, 16, 24)
    y = bicubic_downsample(x, 4)
    assert y.shape == (2, 3, 4, 6) and y.dtype == torch.float32
    assert torch.equal(y, quantize(y)) and y.min() >= 0 and y.max() <= 1
    assert torch.allclose(bicubic_downsample(x, 4, round_8bit=False), y, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="multiple of the factor"):
        bicubic_downsample(torch.rand(1, 3, 15, 16), 4)
    with pytest.raises(ValueError, match="floating"):
        imresize(torch.zeros(4, 4, dtype=torch.uint8), 0.5)


def _ycbcr(x):
    """JPEG's full-range YCbCr (JFIF), written out."""
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.5 + (b - y) / 1.772, 0.5 + (r - y) / 1.402], 1)


def test_subsample_chroma_is_jpegs_420_colour_with_the_luma_kept():
    torch.manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(2, 3, 8, 10)   # mid-range: no clamping
    out = _ycbcr(subsample_chroma(x))
    ref = _ycbcr(x)
    torch.testing.assert_close(out[:, 0], ref[:, 0])   # luma untouched
    # Cb, Cr: 2x2 block means, upsampled bilinearly (half-pixel centres)
    cbcr = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(ref[:, 1:], 2), scale_factor=2,
                                           mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 1:], cbcr)
    grey = torch.rand(1, 1, 6, 6).expand(1, 3, 6, 6)
    torch.testing.assert_close(subsample_chroma(grey), grey)   # no colour: nothing to subsample
    tint = 0.5 + torch.rand(1, 1, 6, 6) * 0.2 + torch.tensor([0.1, -0.05, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(subsample_chroma(tint), tint)   # constant colour survives
    assert abs(sum(JFIF_LUMA) - 1) < 1e-9
    with pytest.raises(ValueError, match="even H and W"):
        subsample_chroma(torch.rand(1, 3, 5, 6))
