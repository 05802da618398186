"""The Triton kernels' launch limits, checked on the host: grid axes and int32 row indices."""
import pytest
import torch

from dpir_fast import ops
from dpir_fast.models import FusionNet

pytest.importorskip("triton")
kernels = ops._kernels()   # dpir_fast.kernels, also from an uninstalled checkout
sampler = kernels.sampler


class GridRecorder:
    """Stands in for a Triton kernel: records the grid of each launch instead of running it."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def test_a_batch_beyond_65535_images_launches_on_one_grid_axis(monkeypatch):
    recorder = GridRecorder()
    monkeypatch.setattr(sampler, "affine_kernel", recorder)
    batch = 70_000   # more than grid axes y and z can hold
    x0 = torch.zeros(batch, 3, 2, 3)
    sampler.affine_update(x0, None, 1.0, 0.0, 0.5, 0, torch.zeros(batch, 4, dtype=torch.int64))
    (grid,) = recorder.grids
    assert len(grid) == 1 and grid[0] >= batch


def test_grid_and_row_index_limits_are_clear_errors():
    assert sampler.check_grid(2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError, match="thread blocks exceed CUDA's 2\\*\\*31 - 1"):
        sampler.check_grid(2**31)
    assert sampler.check_rows(2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError, match="int32 row index"):
        sampler.check_rows(2**31)


@torch.no_grad()
def test_fused_fusionnet_refuses_a_call_past_the_row_index_before_allocating():
    """2·B·H·W encoder rows over 2³¹: an error naming the fix, not a 400 GB allocation or wrapped indices."""
    net = FusionNet(n_feat=8, growth=4, time_hidden=8)
    batch = 2**15
    x = torch.zeros(1, 3, 1, 1).expand(batch, 3, 256, 256)   # no memory behind the batch
    with pytest.raises(ValueError, match="split the batch or sample in tiles"):
        kernels.fusion_forward(net, x, x, torch.zeros(1, 8), torch.bfloat16, torch.zeros(batch, 4, dtype=torch.int64))
