import numpy as np
import pytest
import torch

from dpir_fast.reference.noise import _uniform, draw_noise, noise_keys, philox4x32, philox_randn

from .conftest import RANDN_RTOL


def words(*values):
    return [torch.tensor([v], dtype=torch.int64) for v in values]


@pytest.mark.parametrize("key,counter,expected", [
    # Random123's known-answer vectors for Philox4x32-10.
    (0, (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (0xFFFFFFFFFFFFFFFF, (0xFFFFFFFF,) * 4, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (0x299F31D0A4093822, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(key, counter, expected):
    out = philox4x32(key, *words(*counter))
    assert [int(w) for w in out] == list(expected)


def test_matches_triton_words_uniforms_and_randn(device):
    """tl.randint4x's words and tl.rand4x's uniforms are the reference's exactly, on every device; tl.randn's
    normals to float32 rounding under the interpreter, to RANDN_RTOL on CUDA (libdevice log and cos, sqrt.approx)."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def philox_kernel(words_ptr, uniforms_ptr, normals_ptr, off_ptr, seed, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < n
        offsets = tl.load(off_ptr + i, mask=mask, other=0)
        w0, w1, w2, w3 = tl.randint4x(seed, offsets)
        u1, u2, _, _ = tl.rand4x(seed, offsets)
        tl.store(words_ptr + i, w0.to(tl.int64), mask=mask)
        tl.store(words_ptr + n + i, w1.to(tl.int64), mask=mask)
        tl.store(words_ptr + 2 * n + i, w2.to(tl.int64), mask=mask)
        tl.store(words_ptr + 3 * n + i, w3.to(tl.int64), mask=mask)
        tl.store(uniforms_ptr + i, u1, mask=mask)
        tl.store(uniforms_ptr + n + i, u2, mask=mask)
        tl.store(normals_ptr + i, tl.randn(seed, offsets), mask=mask)

    offsets = torch.cat([torch.tensor([0, 1, 2**32, 2**32 + 5, 77 << 32]),
                         torch.randint(0, 2**41, (500,), generator=torch.Generator().manual_seed(0))])
    n = offsets.numel()
    for seed in (0, 3, 2**40 + 11):
        words = torch.empty(4, n, dtype=torch.int64, device=device)
        uniforms, normals = torch.empty(2, n, device=device), torch.empty(n, device=device)
        philox_kernel[(triton.cdiv(n, 128),)](words, uniforms, normals, offsets.to(device), seed, n, BLOCK=128)
        ref_words = torch.stack(philox4x32(seed, offsets & 0xFFFFFFFF, offsets >> 32))
        assert torch.equal(words.cpu(), ref_words)
        assert torch.equal(uniforms.cpu(), _uniform(ref_words[:2]))
        torch.testing.assert_close(normals.cpu(), philox_randn(seed, offsets), rtol=RANDN_RTOL, atol=2e-6)


def test_statistics_of_the_stream():
    z = draw_noise([7], 3, (1, 3, 128, 160))[0]
    assert abs(z.mean()) < 4 / z.numel() ** 0.5
    assert abs(z.std() - 1) < 0.01
    flat = z.flatten().numpy()
    for a, b in [(z[:, :, :-1], z[:, :, 1:]), (z[:, :-1], z[:, 1:])]:
        assert abs(np.corrcoef(a.flatten(), b.flatten())[0, 1]) < 0.02
    other_step = draw_noise([7], 4, (1, 3, 128, 160))[0].flatten().numpy()
    assert abs(np.corrcoef(flat, other_step)[0, 1]) < 0.02
    # the third moment and the tails of a normal
    assert abs((flat ** 3).mean()) < 0.05 and abs((np.abs(flat) > 1.96).mean() - 0.05) < 0.005


def test_crop_draws_the_whole_images_numbers():
    whole = draw_noise([5, 6], 10, (2, 3, 37, 53))
    crop = draw_noise([5, 6], 10, (2, 3, 11, 20), full_size=(37, 53), origin=(20, 33))
    torch.testing.assert_close(crop, whole[:, :, 20:31, 33:53], rtol=0, atol=0)


def test_a_batch_mixes_tiles_of_different_images():
    """Per-image full sizes and origins: each crop draws its own image's numbers (what tiled batches need)."""
    a, b = draw_noise([5], 4, (1, 3, 37, 53)), draw_noise([9], 4, (1, 3, 20, 24))
    keys = noise_keys([5, 9, 5], (3, 3, 8, 10), full_size=[(37, 53), (20, 24), (37, 53)],
                      origin=[(3, 40), (12, 14), (0, 0)])
    mixed = draw_noise(keys, 4, (3, 3, 8, 10))
    assert torch.equal(mixed[0], a[0, :, 3:11, 40:50])
    assert torch.equal(mixed[1], b[0, :, 12:20, 14:24])
    assert torch.equal(mixed[2], a[0, :, :8, :10])
    assert keys.tolist()[1] == [9, 12 * 24 + 14, 24, 20 * 24]


def test_seed_and_step_change_the_draw_and_repeat_exactly():
    a = draw_noise([1], 2, (1, 3, 8, 8))
    assert torch.equal(a, draw_noise([1], 2, (1, 3, 8, 8)))
    assert not torch.allclose(a, draw_noise([2], 2, (1, 3, 8, 8)))
    assert not torch.allclose(a, draw_noise([1], 3, (1, 3, 8, 8)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="does not fit"):
        noise_keys([0], (1, 3, 10, 10), full_size=(12, 12), origin=(5, 0))
    with pytest.raises(ValueError, match="one \\(h, w\\) pair"):
        noise_keys([0, 1], (2, 3, 4, 4), origin=[(0, 0)] * 3)
    with pytest.raises(ValueError, match="noise counter"):
        noise_keys([0], (1, 3, 4, 4), full_size=(40000, 40000))
    with pytest.raises(ValueError, match="int64 \\[2, 4\\]"):
        noise_keys(torch.zeros(3, 4, dtype=torch.int64), (2, 3, 4, 4))
    with pytest.raises(ValueError, match="one seed per image"):
        draw_noise([1], 0, (2, 3, 4, 4))
    with pytest.raises(ValueError, match="2\\*\\*63"):
        philox_randn(-1, torch.zeros(3, dtype=torch.int64))
