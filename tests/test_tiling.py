import random
import time

import pytest
import torch

from dpir_fast.tiling import (Blender, TilePlan, alignment, blend_weights, free_memory, padded_size, peak_bytes,
                              plan_tiles)

GiB, MiB = 2 ** 30, 2 ** 20


@pytest.mark.parametrize("args,expected", [((8, 4, 4), 8), ((1, 4, 1), 4), ((32, 4, 1), 32), ((1, 4, 2), 2),
                                           ((8, 4, 8), 8), ((3, 4, 2), 6), ((1, 1, 1), 1)])
def test_alignment_is_smallest_multiple(args, expected):
    ir, den, scale = args
    L = alignment(ir, den, scale)
    assert L == expected
    assert L % ir == 0 and L * scale % den == 0
    assert not any(m % ir == 0 and m * scale % den == 0 for m in range(1, L))


def test_padded_size_and_too_small_error():
    assert padded_size(37, 53, 8) == (40, 56)
    assert padded_size(32, 8, 8) == (32, 8)
    assert padded_size(5, 5, 8) == (8, 8)
    for h, w in [(4, 40), (40, 3), (0, 8)]:
        with pytest.raises(ValueError, match="at least 5 pixels.*upscale or pad the image first"):
            padded_size(h, w, 8)


def ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def check_plan(plan: TilePlan, align: int):
    (H, W), (th, tw) = plan.size, plan.tile
    assert H % align == 0 and W % align == 0 and th % align == 0 and tw % align == 0
    assert align <= th <= H and align <= tw <= W
    ys = sorted({y for y, _ in plan.origins})
    xs = sorted({x for _, x in plan.origins})
    assert plan.origins == tuple((y, x) for y in ys for x in xs)
    for axis, size, t in ((ys, H, th), (xs, W, tw)):
        assert axis[0] == 0 and axis[-1] == size - t
        assert all(o % align == 0 for o in axis)
        assert len(axis) == 1 or plan.overlap < t
        assert all(a + t - b >= plan.overlap for a, b in zip(axis, axis[1:]))
        covered = torch.zeros(size, dtype=torch.int32)
        for o in axis:
            covered[o:o + t] += 1
        assert bool((covered > 0).all())  # the tiles are the grid ys × xs, so covering both axes covers the image


def test_plans_cover_aligned_with_overlap_on_random_settings():
    rng = random.Random(0)
    n_split = 0
    for _ in range(50):
        scale, align = rng.choice([1, 2, 4]), rng.choice([1, 2, 4, 8])
        h, w = rng.randint(align // 2 + 1, 300), rng.randint(align // 2 + 1, 300)
        overlap = rng.choice([0, 4, 16, 33])
        overlap_lr = ceil_to(ceil_to(overlap, scale) // scale, align)
        if rng.random() < 0.5:
            tile = (rng.randint(1, 200), rng.randint(1, 200)) if rng.random() < 0.5 else rng.randint(1, 200)
            plan = plan_tiles(h, w, scale=scale, align=align, tile=tile, overlap=overlap)
            assert plan.overlap <= overlap_lr
        else:
            bpp, batch = rng.choice([100, 2000]), rng.choice([1, 3])
            H, W = padded_size(h, w, align)
            side = max(align, 2 * overlap_lr + align)
            smallest = min(side, H) * min(side, W) * scale * scale * bpp * batch
            budget = int(plan_tiles(h, w, scale=scale, align=align).bytes_estimate + smallest * rng.uniform(1, 6))
            plan = plan_tiles(h, w, scale=scale, align=align, overlap=overlap, bytes_per_pixel=bpp,
                              budget_bytes=budget, batch=batch)
            assert plan.bytes_estimate <= budget
            assert plan.overlap == overlap_lr
        n_split += plan.n_tiles > 1
        assert plan.size == padded_size(h, w, align)
        check_plan(plan, align)
        assert plan.out_size == (plan.size[0] * scale, plan.size[1] * scale)
        assert plan.out_origins[-1] == (plan.out_size[0] - plan.out_tile[0], plan.out_size[1] - plan.out_tile[1])
    assert n_split > 40


def test_tile_larger_than_image_is_one_tile():
    plan = plan_tiles(37, 53, scale=4, align=8, tile=1000)
    assert plan.n_tiles == 1 and plan.tile == plan.size == (40, 56) and plan.origins == ((0, 0),)
    assert plan_tiles(100, 80, align=4).n_tiles == 1
    assert plan_tiles(100, 80, align=4, tile=(400, 40), overlap=8).tile == (100, 40)


@pytest.mark.parametrize("h,w,scale,budget,max_pixels", [
    (4000, 6000, 1, 24 * GiB, None), (4000, 6000, 1, 2 * GiB, None),
    (1000, 1500, 4, 2 * GiB, None), (1000, 1500, 4, 24 * GiB, 2 ** 20)])
def test_planning_6000x4000_fits_budget_without_allocating(h, w, scale, budget, max_pixels):
    start = time.perf_counter()
    plan, peak = peak_bytes(plan_tiles, h, w, scale=scale, align=4, bytes_per_pixel=20 * 1024, budget_bytes=budget,
                            max_pixels=max_pixels)
    assert time.perf_counter() - start < 1.0
    assert peak == 0
    assert plan.out_size == (4000, 6000) and plan.n_tiles > 1
    assert plan.bytes_estimate <= budget
    assert max_pixels is None or plan.out_tile[0] * plan.out_tile[1] <= max_pixels
    check_plan(plan, 4)
    assert plan.overlap == 64 // scale


def test_budget_below_fixed_cost_raises_memory_error():
    with pytest.raises(MemoryError, match=r"needs at least .*bytes.*only .*available.*smaller batch.*bf16"):
        plan_tiles(4000, 6000, align=4, bytes_per_pixel=20 * 1024, budget_bytes=GiB // 2)
    with pytest.raises(MemoryError, match=str(GiB // 2)):
        plan_tiles(4000, 6000, align=4, budget_bytes=GiB // 2)
    with pytest.raises(MemoryError, match="smaller overlap"):
        plan_tiles(4000, 6000, align=4, bytes_per_pixel=20 * 1024, budget_bytes=GiB + 100 * MiB, batch=64)


def test_blend_weights_feather_only_between_tiles_and_sum_to_one():
    plan = plan_tiles(100, 130, scale=2, align=4, tile=96, overlap=16)
    n = plan.out_overlap
    assert n == 16
    for i, (y, x) in enumerate(plan.out_origins):
        w = blend_weights(plan, i)
        assert w.shape == (1, 1, *plan.out_tile) and w.dtype == torch.float32
        assert bool((w > 0).all()) and bool((w <= 1).all())
        assert bool((w[..., n:-n, n:-n] == 1).all())
        if y == 0:
            assert bool((w[..., 0, n:-n] == 1).all())
        if x == 0:
            assert bool((w[..., n:-n, 0] == 1).all())
    ramp = blend_weights(plan, 1)[0, 0, plan.out_tile[0] // 2, :n].double()
    torch.testing.assert_close(ramp + ramp.flip(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-6)
    right = blend_weights(plan, 0)[0, 0, plan.out_tile[0] // 2, -n:]
    torch.testing.assert_close(right, ramp.flip(0).float())


def test_blender_reproduces_image_and_blends_convexly():
    plan = plan_tiles(45, 61, scale=2, align=4, tile=40, overlap=12)
    image = torch.rand(3, *plan.out_size)
    th, tw = plan.out_tile
    same, mixed = Blender(3, plan.out_size), Blender(1, plan.out_size)
    lo, hi = 0.25, 0.75
    values = [(lo, hi)[i % 2] for i in range(plan.n_tiles)]
    for i, (y, x) in enumerate(plan.out_origins):
        w = blend_weights(plan, i)
        same.add(image[None, :, y:y + th, x:x + tw], (y, x), w)
        mixed.add(torch.full((1, th, tw), values[i]), (y, x), w)
    torch.testing.assert_close(same.result(), image, rtol=0, atol=1e-6)
    out = mixed.result()
    assert out.min() >= lo - 1e-6 and out.max() <= hi + 1e-6
    assert out.min() < 0.5 < out.max() and 0 < ((out > lo) & (out < hi)).float().mean() < 1
    with pytest.raises(RuntimeError, match="no tile"):
        Blender(1, (8, 8)).result()


def test_peak_bytes_counts_live_storages_once():
    def alloc():
        a = torch.empty(MiB // 4)
        del a
        b = torch.zeros(MiB // 2)
        v, s = b.view(2, -1), b[::2]
        return b, v, s
    _, peak = peak_bytes(alloc)
    assert peak == 2 * MiB

    x = torch.randn(1000)
    _, peak = peak_bytes(lambda t: (t.add_(1), t.view(10, 100), t.mul(2)), x)
    assert peak == 1000 * 4


def test_free_memory_cpu_is_positive():
    free = free_memory("cpu")
    assert isinstance(free, int) and 0 < free
