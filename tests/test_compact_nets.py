"""CompactSR and CompactUNet, the demo IR nets: flat images stay flat, shift and contrast behaviour, records."""
import pytest
import torch
import torch.nn.functional as F

from dpir_fast.checkpoints import build_model, model_record
from dpir_fast.models import CompactSR, CompactUNet


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere, the zero-initialised tail included (a trained net, as far as the tests go)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


def upsample(net, y):
    return F.interpolate(y, scale_factor=net.scale, mode="bicubic", align_corners=False) if net.scale > 1 else y


NETS = [lambda: CompactSR(n_feat=8, n_blocks=2), lambda: CompactSR(n_feat=8, n_blocks=1, scale=2),
        lambda: CompactUNet(n_feat=4, mults=(1, 2, 2), blocks=1)]


@pytest.mark.parametrize("make", NETS, ids=["sr4", "sr2", "unet"])
@torch.no_grad()
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_a_flat_colour_comes_out_flat_at_every_pixel(make, autocast):
    """Also under bf16 autocast (the CPU default where bf16 is native): the zero-sum head stays float32."""
    net = randomised(make())
    for level in ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.1, 0.7, 0.35]):
        y = torch.tensor(level).view(1, 3, 1, 1).expand(2, 3, 12, 20).contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(y)
        assert out.shape == (2, 3, 12 * net.scale, 20 * net.scale)
        torch.testing.assert_close(out.float(), upsample(net, y), rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", NETS, ids=["sr4", "sr2", "unet"])
@torch.no_grad()
def test_the_residual_ignores_offsets_and_scales_with_contrast(make):
    net = randomised(make())
    y = torch.rand(1, 3, 16, 24)
    residual = net(y) - upsample(net, y)
    assert residual.abs().max() > 1e-3   # a real residual, not zero
    offset = torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)
    torch.testing.assert_close(net(y + offset) - upsample(net, y + offset), residual, rtol=0, atol=1e-5)
    torch.testing.assert_close(net(0.5 * y) - upsample(net, 0.5 * y), 0.5 * residual, rtol=0, atol=1e-5)


def test_default_sizes_records_and_input_checks():
    assert sum(p.numel() for p in CompactSR().parameters()) == 803_520
    assert sum(p.numel() for p in CompactUNet().parameters()) == 1_373_888
    for net in (randomised(CompactSR(n_feat=8, n_blocks=1)), randomised(CompactUNet(n_feat=4, mults=(1, 2))),):
        rebuilt = build_model(model_record(net))
        y = torch.rand(1, 3, 8, 8)
        torch.testing.assert_close(rebuilt(y), net(y), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiples of 4"):
        CompactUNet(mults=(1, 2, 2))(torch.rand(1, 3, 10, 12))
    with pytest.raises(ValueError, match="expects a floating \\[B, 3, H, W\\]"):
        CompactSR()(torch.rand(3, 8, 8))
    assert CompactUNet(mults=(1, 2, 2, 2)).size_multiple == 8 and CompactSR(scale=2).scale == 2
