"""BSRT: official key layout (SpyNet from its own file), DCNv2 -> torchvision conversion, counts, determinism."""
import math
import sys

import pytest
import torch

from dpir_fast.checkpoints import CheckpointError
from dpir_fast.models import bsrt_large, bsrt_small, load_bsrt_checkpoint
from dpir_fast.models.bsrt import ModulatedDCN
from dpir_fast.models.spynet import flow_warp

from .helpers import tiny_bsrt

SPYNET_CHANNELS = ((32, 8), (64, 32), (32, 64), (16, 32), (2, 16))


def official_shapes(nframes=2, embed=12, depths=(2, 2), heads=(2, 2), ws=4, mlp=2):
    """Key -> shape of the official BSRT state dict (swinfeature, no non_local), written from its structure."""
    shapes = {}

    def conv(p, o, i, k):
        shapes.update({f"{p}.weight": (o, i, k, k), f"{p}.bias": (o,)})

    def lin(p, o, i):
        shapes.update({f"{p}.weight": (o, i), f"{p}.bias": (o,)})

    def ln(p, d):
        shapes.update({f"{p}.weight": (d,), f"{p}.bias": (d,)})

    def swin(p, d, nh):
        ln(f"{p}.norm1", d)
        shapes.update({f"{p}.attn.relative_position_bias_table": ((2 * ws - 1) ** 2, nh),
                       f"{p}.attn.relative_position_index": (ws * ws, ws * ws)})
        lin(f"{p}.attn.qkv", 3 * d, d)
        lin(f"{p}.attn.proj", d, d)
        ln(f"{p}.norm2", d)
        lin(f"{p}.mlp.fc1", d * mlp, d)
        lin(f"{p}.mlp.fc2", d, d * mlp)

    def dcn(p):
        shapes.update({f"{p}.weight": (64, 64, 3, 3), f"{p}.bias": (64,)})
        conv(f"{p}.conv_offset_mask", 3 * 8 * 9, 64, 3)

    for level in range(6):
        for j, (o, i) in zip((0, 2, 4, 6, 8), SPYNET_CHANNELS):
            conv(f"spynet.basic_module.{level}.basic_module.{j}", o, i, 7)
    shapes["spynet.mean"] = shapes["spynet.std"] = (1, 3, 1, 1)
    conv("conv_flow", 3, 1, 3)
    ln("patch_embed.norm", embed)
    conv("conv_first", embed, 4, 3)
    for i in range(depths[0]):
        swin(f"pre_layers.{i}", embed, heads[0])
    ln("pre_norm", embed)
    conv("conv_after_pre_layer", 256, embed, 3)
    conv("fea_L2_conv1", 128, 64, 3)
    conv("fea_L3_conv1", 256, 128, 3)
    conv("toplayer", 64, 256, 1)
    conv("smooth1", 64, 64, 3)
    conv("smooth2", 64, 64, 3)
    conv("latlayer1", 64, 128, 1)
    conv("latlayer2", 64, 64, 1)
    for lvl in ("L3", "L2", "L1"):
        conv(f"align.{lvl}_offset_conv1", 64, 130, 3)
        conv(f"align.{lvl}_offset_conv2", 64, 64 if lvl == "L3" else 128, 3)
        if lvl != "L3":
            conv(f"align.{lvl}_offset_conv3", 64, 64, 3)
            conv(f"align.{lvl}_fea_conv", 64, 128, 3)
        dcn(f"align.{lvl}_dcnpack")
    conv("align.cas_offset_conv1", 64, 128, 3)
    conv("align.cas_offset_conv2", 64, 64, 3)
    dcn("align.cas_dcnpack")
    conv("fusion", embed, nframes * 64, 1)
    for i in range(1, len(depths)):
        for j in range(depths[i]):
            swin(f"layers.{i - 1}.residual_group.blocks.{j}", embed, heads[i])
        conv(f"layers.{i - 1}.conv", embed, embed, 3)
    ln("norm", embed)
    conv("conv_after_body", embed, embed, 3)
    conv("upconv1", 256, embed, 3)
    conv("upconv2", 256, 64, 3)
    conv("HRconv", 64, 64, 3)
    conv("conv_last", 3, 64, 3)
    conv("skipup1", 256, 1, 3)
    conv("skipup2", 12, 64, 3)
    return shapes


def official_state(seed=0, **cfg):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in official_shapes(**cfg).items():
        if k.endswith("relative_position_index"):
            state[k] = torch.zeros(s, dtype=torch.long)  # any content: recomputed on load
        elif k.endswith(("mean", "std")):
            state[k] = torch.tensor([0.485, 0.456, 0.406] if k.endswith("mean") else [0.229, 0.224, 0.225]).view(s)
        else:
            fan_in = math.prod(s[1:]) if len(s) > 1 else 1
            state[k] = torch.randn(s, generator=g) / math.sqrt(fan_in) + (1.0 if k.endswith("norm1.weight") else 0)
    return state


def _params(shapes):
    return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(("relative_position_index", "mean", "std")))


def test_official_layout_with_spynet_file_loads_strictly(tmp_path):
    state = official_state()
    spynet = {k[len("spynet."):]: v for k, v in state.items() if k.startswith("spynet.basic_module")}
    torch.save({"params": spynet}, tmp_path / "spynet_sintel_final.pth")
    torch.save({"module." + k: v for k, v in state.items() if not k.startswith("spynet.")}, tmp_path / "bsrt.pth")
    model = load_bsrt_checkpoint(tiny_bsrt(), tmp_path / "bsrt.pth", tmp_path / "spynet_sintel_final.pth")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_shapes()
    for k, v in model.state_dict().items():
        if not k.endswith("relative_position_index"):
            assert torch.equal(v, state[k]), k
    tiny_bsrt().load_state_dict(state, strict=True)  # plain torch, strict
    with pytest.raises(CheckpointError, match="missing"):
        load_bsrt_checkpoint(tiny_bsrt(), tmp_path / "bsrt.pth")  # SpyNet weights nowhere


def test_official_counts():
    with torch.device("meta"):  # counts and shapes only: no memory, no init
        small, large = bsrt_small(), bsrt_large()
    assert sum(p.numel() for p in small.parameters()) == 4_915_665
    assert sum(p.numel() for p in large.parameters()) == 20_713_905
    shapes = official_shapes(nframes=14, embed=60, depths=[6] * 5, heads=[6] * 5, ws=8)
    assert len(shapes) == 572 and _params(shapes) == 4_915_665
    assert {k: tuple(v.shape) for k, v in small.state_dict().items()} == shapes


def dcnv2_reference(x, weight, bias, offset, mask, groups):
    """The official DCNv2 forward (stride 1, pad 1, dilation 1), from its im2col kernel, point by point."""
    b, c, h, w = x.shape
    kernel = weight.shape[-1]
    k_pts, cg = kernel * kernel, c // groups
    cols = x.new_zeros(b, c, k_pts, h, w)
    ys, xs = torch.arange(h, dtype=x.dtype).view(h, 1) - 1, torch.arange(w, dtype=x.dtype).view(1, w) - 1
    for g in range(groups):
        img = x[:, g * cg:(g + 1) * cg]
        for k in range(k_pts):
            i, j = divmod(k, kernel)
            py = ys + i + offset[:, g * 2 * k_pts + 2 * k]  # [B, H, W]
            px = xs + j + offset[:, g * 2 * k_pts + 2 * k + 1]
            inside = (py > -1) & (px > -1) & (py < h) & (px < w)
            y0, x0 = py.floor().long(), px.floor().long()
            ly, lx = py - y0, px - x0
            val = 0
            for yy, xx, wgt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                                (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
                ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).view(b, 1, h * w).expand(-1, cg, -1)
                v = img.reshape(b, cg, h * w).gather(2, idx).view(b, cg, h, w)
                val = val + (wgt * ok)[:, None] * v
            cols[:, g * cg:(g + 1) * cg, k] = val * (inside * mask[:, g * k_pts + k])[:, None]
    return torch.einsum("ock,bckhw->bohw", weight.reshape(weight.shape[0], c, k_pts), cols) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("flow_guided", [False, True])
def test_dcn_conversion_matches_official_semantics(flow_guided):
    pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(5)
    dcn = ModulatedDCN(16, 8, deformable_groups=4, flow_guided=flow_guided)
    with torch.no_grad():
        for p in dcn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if not flow_guided:  # large offsets: samples fall off the map on every side
            dcn.conv_offset_mask.weight[: 2 * 36] *= 4
            dcn.conv_offset_mask.bias[: 2 * 36] *= 4
    x, fea = torch.randn(2, 16, 7, 9, generator=g), torch.randn(2, 16, 7, 9, generator=g)
    flow = torch.randn(2, 2, 7, 9, generator=g) * 3
    with torch.no_grad():
        # the official module's own steps: chunk into (o1, o2, mask), offset = cat(o1, o2), sigmoid(mask)
        o1, o2, m = torch.chunk(dcn.conv_offset_mask(fea), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        if flow_guided:
            offset = torch.tanh(offset) * 10 + flow.flip(1).repeat(1, offset.size(1) // 2, 1, 1)
        expected = dcnv2_reference(x, dcn.weight, dcn.bias, offset, torch.sigmoid(m), groups=4)
        out = dcn(x, fea, flow)
    assert offset.abs().max() > 8
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_flow_warp_integer_shift():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    flow = torch.zeros(2, 2, 5, 6)
    flow[:, 0], flow[:, 1] = 1.0, 2.0  # sample one column right, two rows down
    out = flow_warp(x, flow)
    torch.testing.assert_close(out[:, :, :3, :5], x[:, :, 2:, 1:])
    assert (out[:, :, 3:] == 0).all() and (out[:, :, :, 5:] == 0).all()


def test_forward_shapes_sizes_and_determinism():
    pytest.importorskip("torchvision")
    model = tiny_bsrt().eval()
    model.load_state_dict(official_state(seed=2))
    burst = torch.rand(1, 2, 4, 10, 12, generator=torch.Generator().manual_seed(0))  # padded to 12 x 12 inside
    with torch.no_grad():
        a, b = model(burst), model(burst)
    assert a.shape == (1, 3, 80, 96) and torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="burst"):
        model(torch.rand(1, 3, 4, 8, 8))


def test_without_torchvision_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)   # what a missing torchvision raises: ImportError
    x = torch.rand(1, 8, 5, 5)
    with pytest.raises(ImportError, match=r"need torchvision: pip install torchvision .*dpir_fast\[burst\]"):
        ModulatedDCN(8, 8, deformable_groups=2)(x, x)
