"""SwinIR: official key layout and parameter count, buffers recomputed on load, any input size, the runtime
shifted-window mask, validation, and the float32 residual stream under bf16 autocast / float16."""
import json
import math

import pytest
import torch

from dpir_fast.models import swinir as swinir_mod
from dpir_fast.models.swinir import SwinIR, swinir_classical_sr4, swinir_lightweight_sr4

TINY = dict(img_size=16, window_size=4, embed_dim=12, depths=[2, 2], num_heads=[2, 2], mlp_ratio=2)
CLASSICAL = dict(TINY, upscale=2, upsampler="pixelshuffle")
LIGHT = dict(TINY, upscale=3, upsampler="pixelshuffledirect")


# Expected official key -> shape, written from the structure of JingyunLiang/SwinIR models/network_swinir.py,
# independently of our module tree. Buffers are listed separately (they are not parameters).
def _conv(p, cin, cout, k=3):
    return {p + "weight": (cout, cin, k, k), p + "bias": (cout,)}


def _resi(p, c, kind):
    if kind == "1conv":
        return _conv(p, c, c)
    return {**_conv(p + "0.", c, c // 4), **_conv(p + "2.", c // 4, c // 4, 1), **_conv(p + "4.", c // 4, c)}


def official_layout(img_size=64, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6),
                    window_size=7, mlp_ratio=4.0, upscale=2, upsampler="", resi_connection="1conv", **_):
    """(params, buffers): two dicts key -> shape, for patch_size 1, patch_norm True, ape False."""
    c, f, res = embed_dim, 64, img_size
    ws, shifted = (window_size, True) if res > window_size else (res, False)
    n, nw, hid = ws * ws, (res // ws) ** 2, int(c * mlp_ratio)
    params = {**_conv("conv_first.", in_chans, c), "patch_embed.norm.weight": (c,), "patch_embed.norm.bias": (c,)}
    buffers = {}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            params.update({
                p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                p + "attn.relative_position_bias_table": ((2 * ws - 1) ** 2, heads),
                p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                p + "mlp.fc1.weight": (hid, c), p + "mlp.fc1.bias": (hid,),
                p + "mlp.fc2.weight": (c, hid), p + "mlp.fc2.bias": (c,),
            })
            buffers[p + "attn.relative_position_index"] = (n, n)
            if j % 2 == 1 and shifted:
                buffers[p + "attn_mask"] = (nw, n, n)
        params.update(_resi(f"layers.{i}.conv.", c, resi_connection))
    params.update({"norm.weight": (c,), "norm.bias": (c,), **_resi("conv_after_body.", c, resi_connection)})
    if upsampler == "pixelshuffle":
        params.update(_conv("conv_before_upsample.0.", c, f))
        if upscale == 3:
            params.update(_conv("upsample.0.", f, 9 * f))
        for k in range(int(math.log2(upscale)) if upscale != 3 else 0):
            params.update(_conv(f"upsample.{2 * k}.", f, 4 * f))
        params.update(_conv("conv_last.", f, in_chans))
    elif upsampler == "pixelshuffledirect":
        params.update(_conv("upsample.0.", c, upscale ** 2 * in_chans))
    elif upsampler == "nearest+conv":
        params.update({**_conv("conv_before_upsample.0.", c, f), **_conv("conv_up1.", f, f),
                       **_conv("conv_hr.", f, f), **_conv("conv_last.", f, in_chans)})
        if upscale == 4:
            params.update(_conv("conv_up2.", f, f))
    else:
        params.update(_conv("conv_last.", c, in_chans))
    return params, buffers


@pytest.mark.parametrize("cfg", [
    CLASSICAL, LIGHT, dict(TINY, upscale=4, upsampler="pixelshuffle", resi_connection="3conv"),
    dict(TINY, upscale=4, upsampler="nearest+conv"), dict(TINY, upscale=1, upsampler="", in_chans=1),
    dict(TINY, img_size=4, upscale=2, upsampler="pixelshuffle"),  # img_size <= window: no shift, no mask
], ids=["classical", "lightweight", "3conv-x4", "nearest+conv", "denoise-gray", "small-img"])
def test_state_dict_matches_official_layout(cfg):
    params, buffers = official_layout(**cfg)
    sd = SwinIR(**cfg).state_dict()
    assert set(sd) == set(params) | set(buffers)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {**params, **buffers}


def test_official_parameter_counts():
    # Official classical x4 (001_classicalSR_*_x4, embed 180, 6x6 blocks): 11,900,199 parameters.
    with torch.device("meta"):  # shapes only
        classical, light = swinir_classical_sr4(), swinir_lightweight_sr4()
    params, _ = official_layout(**classical.config)
    assert sum(math.prod(s) for s in params.values()) == 11_900_199
    assert sum(p.numel() for p in classical.parameters()) == 11_900_199
    assert sum(p.numel() for p in light.parameters()) == 929_628
    assert (classical.config["embed_dim"], classical.scale, light.config["upsampler"]) == (180, 4, "pixelshuffledirect")


def test_config_roundtrip_and_attributes():
    m = SwinIR(**dict(TINY, img_size=(16, 16), upscale=4, upsampler="pixelshuffle"))
    cfg = json.loads(json.dumps(m.config))
    m2 = SwinIR(**cfg)
    assert {k: v.shape for k, v in m2.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert (m.size_multiple, m.scale) == (4, 4)
    assert SwinIR(**dict(TINY, upscale=2, upsampler="")).scale == 1
    # The official defaults (img_size 64, window 7: not a multiple) build and run (the official code fails).
    with torch.no_grad():
        assert SwinIR(depths=[2], num_heads=[2], embed_dim=12)(torch.rand(1, 3, 9, 10)).shape == (1, 3, 9, 10)


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return SwinIR(**{**CLASSICAL, **kw}).eval()


@torch.no_grad()
def test_load_from_other_img_size_and_missing_buffers():
    m48 = _tiny(img_size=48)
    sd = m48.state_dict()
    m64 = _tiny(seed=1, img_size=64)
    m64.load_state_dict(sd, strict=True)
    mask_key = "layers.0.residual_group.blocks.1.attn_mask"
    assert m64.state_dict()[mask_key].shape == (256, 16, 16)  # its own, not the checkpoint's (144, 16, 16)
    for hw in [(48, 48), (64, 64), (13, 17)]:
        x = torch.rand(2, 3, *hw)
        torch.testing.assert_close(m64(x), m48(x), rtol=1e-5, atol=1e-5)

    stripped = {k: v for k, v in sd.items() if not k.endswith(("attn_mask", "relative_position_index"))}
    corrupt = dict(sd, **{mask_key: torch.zeros(3, 3)})
    for bad in (stripped, corrupt):
        m = _tiny(seed=2, img_size=48)
        m.load_state_dict(bad, strict=True)
        x = torch.rand(1, 3, 20, 24)
        torch.testing.assert_close(m(x), m48(x), rtol=1e-5, atol=1e-5)
    # A checkpoint with masks into a model whose img_size <= window (no shifted blocks): extra masks dropped.
    _tiny(img_size=4).load_state_dict(sd, strict=True)


@torch.no_grad()
@pytest.mark.parametrize("upsampler,upscale", [
    ("pixelshuffle", 2), ("pixelshuffle", 3), ("pixelshuffledirect", 3), ("nearest+conv", 4), ("", 1)])
def test_odd_sizes_and_batch_consistency(upsampler, upscale):
    m = _tiny(upsampler=upsampler, upscale=upscale, resi_connection="3conv" if upscale == 3 else "1conv")
    x = torch.rand(2, 3, 13, 17)
    y = m(x)
    assert y.shape == (2, 3, 13 * upscale, 17 * upscale) and y.dtype == x.dtype
    torch.testing.assert_close(m(x[1:]), y[1:], rtol=1e-5, atol=1e-5)
    assert m(torch.rand(1, 3, 3, 5)).shape == (1, 3, 3 * upscale, 5 * upscale)  # smaller than a window


def test_bad_inputs():
    m = _tiny()
    for x in (torch.rand(3, 8, 8), torch.rand(1, 1, 8, 8), torch.rand(1, 3, 1, 8, 8), torch.ones(1, 3, 8, 8).long()):
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*got"):
            m(x)
    with pytest.raises(ValueError, match="upsampler"):
        SwinIR(upsampler="bicubic")
    with pytest.raises(ValueError, match="resi_connection"):
        SwinIR(resi_connection="2conv")


def brute_force_mask(h, w, ws, shift):
    """Shifted-window mask from first principles: after rolling by −shift, a token at rolled row i came from
    row (i + shift) mod h; two tokens of one window may attend to each other only if neither or both of them
    wrapped around, per axis."""
    wins = [(r, c) for r in range(0, h, ws) for c in range(0, w, ws)]
    mask = torch.zeros(len(wins), ws * ws, ws * ws)
    for k, (r0, c0) in enumerate(wins):
        toks = [(r0 + a, c0 + b) for a in range(ws) for b in range(ws)]
        for p, (i1, j1) in enumerate(toks):
            for q, (i2, j2) in enumerate(toks):
                same = (i1 + shift >= h) == (i2 + shift >= h) and (j1 + shift >= w) == (j2 + shift >= w)
                mask[k, p, q] = 0.0 if same else -100.0
    return mask


@torch.no_grad()
def test_runtime_mask_matches_brute_force_and_is_cached(monkeypatch):
    m = _tiny()
    seen = []
    m.layers[1].residual_group.blocks[1].attn.register_forward_pre_hook(lambda mod, args: seen.append(args[1]))
    calls = []
    real = swinir_mod.shifted_window_mask
    monkeypatch.setattr(swinir_mod, "shifted_window_mask", lambda *a, **k: calls.append(a) or real(*a, **k))
    x = torch.rand(1, 3, 13, 17)  # padded to 16 x 20 (img_size is 16 x 16)
    m(x)
    m(x)
    assert len(calls) == 1  # computed once for this size, then cached
    torch.testing.assert_close(seen[0], brute_force_mask(16, 20, 4, 2), rtol=0, atol=0)
    m(torch.rand(1, 3, 16, 16))  # the default size uses the stored buffer
    assert len(calls) == 1
    torch.testing.assert_close(seen[-1], brute_force_mask(16, 16, 4, 2), rtol=0, atol=0)


@torch.no_grad()
def test_bf16_autocast_close_to_fp32():
    m = _tiny(upscale=4)
    x = torch.rand(2, 3, 13, 17)
    ref64 = m.double()(x.double())
    m.float()
    err32 = (m(x).double() - ref64).abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    err = (y.double() - ref64).abs().max()
    # bf16 unit roundoff is 2^-9 ~ 2e-3; outputs are O(1) and measure ~1.5e-3 from fp64 (a whole-bf16 model:
    # ~3e-3). Allow 5 roundoffs (1e-2): far below a broken stream (NaN/inf, O(1) errors).
    assert err32 < 1e-5 and err < 1e-2, (float(err32), float(err))


@torch.no_grad()
def test_float16_residual_stream_beyond_fp16_range():
    m = _tiny(upscale=2)
    for layer in m.layers:  # make the un-normalised stream grow past float16's max (65504), as trained SwinIRs do
        layer.conv.weight.mul_(1000.0)
    peak = []
    m.layers[-1].register_forward_hook(lambda mod, args, out: peak.append(out.abs().max().item()))
    x = torch.rand(1, 3, 13, 17)
    ref = m(x)
    assert peak[0] > 65504 * 2
    y = m.half()(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    # float16 unit roundoff 2^-11 ~ 5e-4; measured ~4e-4 from fp32; allow 5 roundoffs as in the bf16 test.
    assert (y.float() - ref).abs().max() < 2.5e-3


def test_train_mode_drop_path_and_checkpointing():
    m = SwinIR(**dict(CLASSICAL, drop_path_rate=0.5, use_checkpoint=True)).train()
    x = torch.rand(2, 3, 13, 17)
    m(x).square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())
