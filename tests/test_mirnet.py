"""MIRNet / MIRNet-S: official parameter counts, weight tying, official key layout, sizes, validation."""
import json

import pytest
import torch

from dpir_fast.models.mirnet import MIRNet, mirnet_s

BLUR = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16


# Expected official key -> shape, written from the structure of swz30/MIRNet networks/MIRNet_model.py
# (height 3, width 2, stride 2, no bias), independently of our module tree.
def _dau(p, c):
    return {
        p + "body.0.weight": (c, c, 3, 3), p + "body.1.weight": (1,), p + "body.2.weight": (c, c, 3, 3),
        p + "SA.spatial.conv.weight": (1, 2, 5, 5),
        p + "CA.conv_du.0.weight": (c // 8, c, 1, 1), p + "CA.conv_du.2.weight": (c, c // 8, 1, 1),
        p + "conv1x1.weight": (c, 2 * c, 1, 1),
    }


def _down(p, c, n):
    keys = {}
    for i in range(n):
        q, ci = f"{p}body.{i}.", c * 2**i
        keys.update({
            q + "top.0.weight": (ci, ci, 1, 1), q + "top.1.weight": (1,), q + "top.2.weight": (ci, ci, 3, 3),
            q + "top.3.weight": (1,), q + "top.4.filt": (ci, 1, 3, 3), q + "top.5.weight": (2 * ci, ci, 1, 1),
            q + "bot.0.filt": (ci, 1, 3, 3), q + "bot.1.weight": (2 * ci, ci, 1, 1),
        })
    return keys


def _up(p, c, n):
    keys = {}
    for i in range(n):
        q, ci = f"{p}body.{i}.", c // 2**i
        keys.update({
            q + "top.0.weight": (ci, ci, 1, 1), q + "top.1.weight": (1,), q + "top.2.weight": (ci, ci, 3, 3),
            q + "top.3.weight": (1,), q + "top.4.weight": (ci // 2, ci, 1, 1), q + "bot.1.weight": (ci // 2, ci, 1, 1),
        })
    return keys


def _skff(p, c):
    d = max(c // 8, 4)
    keys = {p + "conv_du.0.weight": (d, c, 1, 1), p + "conv_du.1.weight": (1,)}
    keys.update({f"{p}fcs.{k}.weight": (c, d, 1, 1) for k in range(3)})
    return keys


def _msrb(p, n):
    keys = {}
    for j in range(3):
        for col in range(2):
            keys.update(_dau(f"{p}blocks.{j}.{col}.", n * 2**j))
    keys.update(_up(p + "last_up.1.", 2 * n, 1))
    keys.update(_up(p + "last_up.2.", 4 * n, 2))
    keys.update(_down(f"{p}down.{n}_4.", n, 2))
    keys.update(_down(f"{p}down.{n}_2.", n, 1))
    keys.update(_down(f"{p}down.{2 * n}_2.", 2 * n, 1))
    keys.update(_up(f"{p}up.{4 * n}_4.", 4 * n, 2))
    keys.update(_up(f"{p}up.{4 * n}_2.", 4 * n, 1))
    keys.update(_up(f"{p}up.{2 * n}_2.", 2 * n, 1))
    keys[p + "conv_out.weight"] = (n, n, 3, 3)
    for j in range(3):
        keys.update(_skff(f"{p}selective_kernel.{j}.", n * 2**j))
    return keys


def official_keys(in_channels=3, out_channels=3, n_feat=64, n_rrg=3, n_msrb=2):
    keys = {"conv_in.weight": (n_feat, in_channels, 3, 3)}
    for r in range(n_rrg):
        for m in range(n_msrb):
            keys.update(_msrb(f"body.{r}.body.{m}.", n_feat))
        keys[f"body.{r}.body.{n_msrb}.weight"] = (n_feat, n_feat, 3, 3)
    keys["conv_out.weight"] = (out_channels, n_feat, 3, 3)
    return keys


def official_state_dict(seed=0, **kw):
    """Random weights in the official layout, tied where the official network ties them."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_keys(**kw).items():
        if k.endswith("filt"):
            sd[k] = BLUR.expand(shape).clone()
        elif ".blocks." in k and k.endswith("body.1.weight"):
            sd[k] = torch.tensor([0.1234])  # the one PReLU of all DAUs
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    for k in sd:  # second MSRB column = first column's DAU
        if ".blocks." in k and k.split(".blocks.")[1].split(".")[1] == "1":
            j = k.split(".blocks.")[1].split(".")[0]
            sd[k] = sd[k.replace(f".blocks.{j}.1.", f".blocks.{j}.0.")]
    return sd


def small(**kw):
    torch.manual_seed(0)
    return mirnet_s(**{"n_feat": 8, "n_rrg": 1, **kw}).eval()


def _dau_act(model):
    return model.body[0].body[0].blocks[0][0].body[1]


def test_parameter_counts():
    assert sum(p.numel() for p in MIRNet().parameters()) == 31_787_419
    assert sum(p.numel() for p in mirnet_s().parameters()) == 15_951_310


@pytest.mark.parametrize("kw, n_keys", [({}, 797), ({"in_channels": 4, "n_msrb": 1}, 401)])
def test_official_key_count_and_shapes(kw, n_keys):
    expected = official_keys(**kw)
    assert len(expected) == n_keys
    ours = {k: tuple(v.shape) for k, v in MIRNet(**kw).state_dict().items()}
    assert ours == expected


def test_weight_tying():
    m = MIRNet(n_feat=8)
    msrb = m.body[0].body[0]
    for j in range(3):
        assert msrb.blocks[j][0] is msrb.blocks[j][1]
    assert msrb.blocks[0][0] is not msrb.blocks[1][0]
    assert m.body[0].body[0] is not m.body[0].body[1]
    act = _dau_act(m)
    daus = [d for d in m.modules() if type(d).__name__ == "DAU"]
    assert len(daus) == 3 * 2 * 3 and all(d.body[1] is act for d in daus)
    assert _dau_act(MIRNet(n_feat=8)) is not act  # shared within a network only
    # the final aggregation uses the level-0 SKFF: its inputs are the level-0 SKFF's calls, seen by a hook
    calls = []
    msrb.selective_kernel[0].register_forward_hook(lambda mod, inp, out: calls.append(inp[0][0].shape))
    m.eval()(torch.rand(1, 3, 8, 8))
    assert len(calls) == 2  # one for the mesh column, one for the final aggregation


def test_official_state_dict_loads_strictly():
    m = small()
    sd = official_state_dict(in_channels=4, n_feat=8, n_rrg=1, n_msrb=1)
    m.load_state_dict(sd, strict=True)
    msrb = m.body[0].body[0]
    assert torch.equal(m.conv_in.weight, sd["conv_in.weight"])
    assert torch.equal(m.conv_out.weight, sd["conv_out.weight"])
    assert torch.equal(m.body[0].body[1].weight, sd["body.0.body.1.weight"])
    assert torch.equal(msrb.selective_kernel[2].fcs[1].weight, sd["body.0.body.0.selective_kernel.2.fcs.1.weight"])
    assert torch.equal(msrb.up["32_4"].body[1].top[2].weight, sd["body.0.body.0.up.32_4.body.1.top.2.weight"])
    assert torch.equal(msrb.down["8_4"].body[1].bot[1].weight, sd["body.0.body.0.down.8_4.body.1.bot.1.weight"])
    assert torch.equal(msrb.blocks[1][1].conv1x1.weight, sd["body.0.body.0.blocks.1.0.conv1x1.weight"])
    assert _dau_act(m).weight.item() == pytest.approx(0.1234)


def test_blur_filter_is_official_buffer():
    m = small()
    buffers = dict(m.named_buffers())
    filt = buffers["body.0.body.0.down.8_2.body.0.top.4.filt"]
    assert filt.shape == (8, 1, 3, 3) and torch.equal(filt[3, 0], BLUR)
    assert not any(filt is p for p in m.parameters())


def test_global_residual_adds_first_three_channels():
    m = small()
    torch.nn.init.zeros_(m.conv_out.weight)
    x = torch.rand(2, 4, 12, 16)
    with torch.no_grad():
        assert torch.equal(m(x), x[:, :3])


@pytest.mark.parametrize("shape", [(1, 4, 37, 53), (1, 4, 3, 5), (2, 4, 16, 20)])
def test_any_size(shape):
    x = torch.rand(shape)
    with torch.no_grad():
        y = small()(x)
    assert y.shape == (shape[0], 3, *shape[2:]) and torch.isfinite(y).all()


def test_batch_matches_per_sample():
    m = small()
    x = torch.rand(3, 4, 21, 18)
    with torch.no_grad():
        batched = m(x)
        single = torch.cat([m(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 16, 16), (1, 3, 16, 16), (1, 5, 16, 16)])
def test_bad_input_raises(shape):
    with pytest.raises(ValueError, match=r"expects input \[B, 4, H, W\], got shape"):
        small()(torch.rand(shape))


def test_bad_config_raises():
    with pytest.raises(ValueError, match="stride"):
        MIRNet(stride=3)
    with pytest.raises(ValueError, match="in_channels"):
        MIRNet(in_channels=1, out_channels=3)


def test_deterministic_and_config_roundtrip():
    m = small()
    assert m.config == {"in_channels": 4, "out_channels": 3, "n_feat": 8, "kernel_size": 3, "stride": 2,
                        "n_rrg": 1, "n_msrb": 1, "height": 3, "width": 2, "bias": False}
    rebuilt = MIRNet(**json.loads(json.dumps(m.config))).eval()
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    x = torch.rand(1, 4, 20, 24)
    with torch.no_grad():
        a, b, c = m(x), m(x), rebuilt(x)
    assert torch.equal(a, b) and torch.equal(a, c)
