"""BSRT (Luo et al., CVPR-W 2022) for burst joint demosaicking, denoising and super-resolution.

Own implementation of the structure of Algolzw/BSRT ``code/synthetic/bsrt/model/bsrt.py`` (the
``--swinfeature``, no ``--non_local`` configuration of the released Small and Large models): official
checkpoints load unchanged. Pipeline: skip branch from the base frame; SpyNet flows (3 levels) between a
learned 3-channel view of each frame and the base frame; Swin feature extraction and an FPN; flow-guided
PCD alignment with modulated deformable convolutions; 1×1 fusion of the frames; RSTBs; two pixel-shuffle
×2 upsamplers. The Swin blocks and RSTBs are those of :mod:`.swinir`, whose keys are BSRT's.

Deformable convolutions run through ``torchvision.ops.deform_conv2d`` in float32 (the official DCNv2
extension casts its inputs to float32 too); torchvision (the ``burst`` extra) is imported only when they run.
See :func:`dcnv2_offset_mask` for the layout conversion.

Input: ``[B, N, 4, h, w]`` packed RGGB RAW in [0, 1] (N = ``nframes``, frame 0 the base frame); output
``[B, 3, 8h, 8w]`` linear camera RGB (the space of the synthetic-burst ground truth), unclamped. Size
rule: h and w are reflect-padded to a multiple of ``size_multiple`` (the window size, 8) and the output
cropped back.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint_io import extract_state_dict, load_checkpoint, read_checkpoint
from ._common import crop_to, pad_to_multiple
from .spynet import SpyNet, flow_warp
from .swinir import RSTB, PatchEmbed, SwinTransformerBlock, _init_weights, _layer_norm, shifted_window_mask

NUM_FEAT, DCN_GROUPS, MAX_RESIDUE = 64, 8, 10.0


def dcnv2_offset_mask(out: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the official ``conv_offset_mask`` output into torchvision's (offset, mask logits).

    The official modules chunk ``out`` [B, 3·G·K, H, W] into (o1, o2, mask) and pass ``cat(o1, o2)`` as
    the offset: DCNv2's kernels read offset channel ``g·2K + 2k`` as Δy and ``g·2K + 2k + 1`` as Δx of
    kernel point k (row-major) of deformable group g, and mask channel ``g·K + k`` — the very layout of
    ``torchvision.ops.deform_conv2d``. So the conversion is this channel split; weights, biases and the
    offset convolution load as they are. ``points`` = G·K. Returns offset [B, 2GK, H, W], mask [B, GK, H, W].
    """
    return out[:, : 2 * points], out[:, 2 * points: 3 * points]


def _deform_conv2d():
    """``torchvision.ops.deform_conv2d``, imported on first use: BSRT is the only user of torchvision."""
    try:
        from torchvision.ops import deform_conv2d
    except ImportError as err:
        raise ImportError("BSRT's deformable convolutions need torchvision: pip install torchvision (the release "
                          "built for your torch), or the dpir_fast[burst] extra") from err
    return deform_conv2d


class ModulatedDCN(nn.Module):
    """DCNv2 ``DCN_sep`` / ``FlowGuidedDCN``: offsets and masks from other features (keys weight, bias,
    conv_offset_mask.*). Flow-guided: offset = 10·tanh(learned) + the flow, as (Δy, Δx) per kernel point."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1,
                 deformable_groups: int = DCN_GROUPS, flow_guided: bool = False):
        super().__init__()
        self.padding, self.groups, self.flow_guided = padding, deformable_groups, flow_guided
        self.points = deformable_groups * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.conv_offset_mask = nn.Conv2d(in_ch, 3 * self.points, kernel_size, 1, padding)
        bound = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: torch.Tensor, fea: torch.Tensor, flow: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W] sampled; fea [B, C, H, W] gives offsets/masks; flow [B, 2, H, W] (Δx, Δy)."""
        deform_conv2d = _deform_conv2d()
        offset, mask = dcnv2_offset_mask(self.conv_offset_mask(fea), self.points)
        with torch.autocast(x.device.type, enabled=False):
            offset, mask = offset.float(), torch.sigmoid(mask.float())
            if self.flow_guided:
                offset = torch.tanh(offset) * MAX_RESIDUE + flow.float().flip(1).repeat(1, self.points, 1, 1)
            return deform_conv2d(x.float(), offset, self.weight.float(), self.bias.float(),
                                 padding=(self.padding, self.padding), mask=mask)


class FlowGuidedPCDAlign(nn.Module):
    """EDVR's pyramid-cascading-deformable alignment with flow-guided DCNs at 3 levels + a cascading DCN."""

    def __init__(self, nf: int = NUM_FEAT, groups: int = DCN_GROUPS):
        super().__init__()

        def conv(cin):
            return nn.Conv2d(cin, nf, 3, 1, 1)

        for lvl in ("L3", "L2", "L1"):
            setattr(self, f"{lvl}_offset_conv1", conv(nf * 2 + 2))
            setattr(self, f"{lvl}_offset_conv2", conv(nf if lvl == "L3" else nf * 2))
            if lvl != "L3":
                setattr(self, f"{lvl}_offset_conv3", conv(nf))
            setattr(self, f"{lvl}_dcnpack", ModulatedDCN(nf, nf, deformable_groups=groups, flow_guided=True))
            if lvl != "L3":
                setattr(self, f"{lvl}_fea_conv", conv(nf * 2))
        self.cas_offset_conv1 = conv(nf * 2)
        self.cas_offset_conv2 = conv(nf)
        self.cas_dcnpack = ModulatedDCN(nf, nf, deformable_groups=groups)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, nbr, warped, ref, flows):
        """Lists [L1, L2, L3] of [B, C, H/2^l, W/2^l] features (flows [B, 2, ...]) -> aligned L1 [B, C, H, W]."""
        act, up = self.lrelu, _up2
        offset, fea = None, None
        for i, lvl in ((2, "L3"), (1, "L2"), (0, "L1")):
            o = act(getattr(self, f"{lvl}_offset_conv1")(torch.cat([warped[i], ref[i], flows[i]], 1)))
            if offset is None:
                o = act(self.L3_offset_conv2(o))
            else:
                o = act(getattr(self, f"{lvl}_offset_conv2")(torch.cat([o, up(offset) * 2], 1)))
                o = act(getattr(self, f"{lvl}_offset_conv3")(o))
            f = getattr(self, f"{lvl}_dcnpack")(nbr[i], o, flows[i]).to(o.dtype)
            if fea is None:
                f = act(f)
            else:
                f = getattr(self, f"{lvl}_fea_conv")(torch.cat([f, up(fea)], 1))
                f = act(f) if lvl == "L2" else f
            offset, fea = o, f
        o = act(self.cas_offset_conv2(act(self.cas_offset_conv1(torch.cat([fea, ref[0]], 1)))))
        return self.cas_dcnpack(fea, o).to(o.dtype)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _drop_attn_masks(module, state_dict, prefix, local_metadata) -> None:
    # BSRT's official Swin blocks compute their masks on the fly: its state dicts have no attn_mask.
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("attn_mask")]:
        del state_dict[key]


class BSRT(nn.Module):
    """BSRT with the official constructor arguments (minus ``args``) and state-dict keys.

    Defaults are BSRT-Small's (:func:`bsrt_small`); ``swinfeature`` must stay True and ``non_local``,
    ``ape`` False (the released models' settings). ``img_size`` is the size (2h) of the RSTB token map
    whose shifted-window masks are precomputed; other sizes get theirs computed and cached.

    forward: x [B, nframes, 4, h, w] packed RGGB RAW, frame 0 the base -> [B, out_chans, 8h, 8w].
    """

    scale = 8
    input_kind = "burst"
    output_space = "linear"

    def __init__(self, nframes=14, img_size=64, patch_size=1, in_chans=4, out_chans=3, embed_dim=60,
                 depths=(6, 6, 6, 6, 6), num_heads=(6, 6, 6, 6, 6), window_size=8, mlp_ratio=2.0, qkv_bias=True,
                 qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True,
                 use_checkpoint=False, upscale=4, non_local=False, swinfeature=True):
        super().__init__()
        if not swinfeature or non_local or ape or patch_size != 1 or in_chans != 4:
            raise ValueError("BSRT is implemented for swinfeature=True, non_local=False, ape=False, patch_size=1 "
                             "and in_chans=4 (the released BSRT-Small/Large configuration)")
        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ValueError(f"depths and num_heads need equal lengths >= 2, got {list(depths)}, {list(num_heads)}")
        self.config = dict(nframes=nframes, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           out_chans=out_chans, embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
                           window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                           drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                           ape=ape, patch_norm=patch_norm, use_checkpoint=use_checkpoint, upscale=upscale,
                           non_local=non_local, swinfeature=swinfeature)
        self.nframes, self.in_chans, self.burst_frames = nframes, in_chans, nframes
        res = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        swin = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate)

        # 1. flows and shallow features
        self.spynet = SpyNet(return_levels=(3, 4, 5))
        self.conv_flow = nn.Conv2d(1, 3, 3, 1, 1)
        self.flow_ps = nn.PixelShuffle(2)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        half = (res[0] // 2, res[1] // 2)
        self.pre_layers = nn.ModuleList([
            SwinTransformerBlock(embed_dim, half, num_heads[0], window_size, 0 if i % 2 == 0 else window_size // 2,
                                 drop_path=dpr[i], **swin) for i in range(depths[0])])
        self.pre_norm = nn.LayerNorm(embed_dim)
        self.conv_after_pre_layer = nn.Conv2d(embed_dim, NUM_FEAT * 4, 3, 1, 1)
        self.mid_ps = nn.PixelShuffle(2)
        self.fea_L2_conv1 = nn.Conv2d(NUM_FEAT, NUM_FEAT * 2, 3, 2, 1)
        self.fea_L3_conv1 = nn.Conv2d(NUM_FEAT * 2, NUM_FEAT * 4, 3, 2, 1)
        # 2. FPN and alignment
        self.toplayer = nn.Conv2d(NUM_FEAT * 4, NUM_FEAT, 1)
        self.smooth1 = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
        self.smooth2 = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
        self.latlayer1 = nn.Conv2d(NUM_FEAT * 2, NUM_FEAT, 1)
        self.latlayer2 = nn.Conv2d(NUM_FEAT, NUM_FEAT, 1)
        self.align = FlowGuidedPCDAlign(NUM_FEAT, DCN_GROUPS)
        # 3. fusion and deep features
        self.fusion = nn.Conv2d(nframes * NUM_FEAT, embed_dim, 1)
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList([
            RSTB(embed_dim, "1conv", input_resolution=res, depth=depths[i], num_heads=num_heads[i],
                 window_size=window_size, drop_path=dpr[starts[i]:starts[i] + depths[i]],
                 use_checkpoint=use_checkpoint, **swin)
            for i in range(1, len(depths))])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        # 4. reconstruction and the skip branch from the base frame
        self.upconv1 = nn.Conv2d(embed_dim, NUM_FEAT * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(NUM_FEAT, 64 * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.HRconv = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, out_chans, 3, 1, 1)
        self.skip_pixel_shuffle = nn.PixelShuffle(2)
        self.skipup1 = nn.Conv2d(in_chans // 4, NUM_FEAT * 4, 3, 1, 1)
        self.skipup2 = nn.Conv2d(NUM_FEAT, out_chans * 4, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1)

        pre_ws = self.pre_layers[0].window_size
        deep_ws = self.layers[0].residual_group.blocks[0].window_size
        deep_ws //= math.gcd(deep_ws, 2)  # the deep token map is 2h × 2w
        self.size_multiple = pre_ws * deep_ws // math.gcd(pre_ws, deep_ws)
        self._masks: dict = {}
        self.apply(_init_weights)
        self._register_state_dict_hook(_drop_attn_masks)

    def _mask(self, blocks, size: tuple[int, int], device) -> torch.Tensor | None:
        """Shifted-window mask for a token map of ``size`` other than the blocks' precomputed one."""
        blk = next((b for b in blocks if b.shift_size > 0), None)
        if blk is None or size == blk.mask_resolution:
            return None
        key = (size, blk.window_size, blk.shift_size, str(device))
        if key not in self._masks:
            if len(self._masks) >= 4:
                self._masks.clear()
            self._masks[key] = shifted_window_mask(*size, blk.window_size, blk.shift_size, device)
        return self._masks[key]

    def _swin(self, x: torch.Tensor, blocks, norm: nn.LayerNorm, residual: bool) -> torch.Tensor:
        """[B, C, H, W] -> patch-embed norm -> Swin blocks (or RSTBs) -> norm -> [B, C, H, W]."""
        size = (x.shape[2], x.shape[3])
        t = self.patch_embed(x, torch.promote_types(norm.weight.dtype, torch.float32))
        mask = self._mask([b for m in blocks for b in (m.residual_group.blocks if residual else [m])], size, x.device)
        for m in blocks:
            t = m(t, size, mask)
        t = _layer_norm(norm, t, norm.weight.dtype)
        return t.transpose(1, 2).reshape(x.shape[0], -1, *size)

    def _ref_flows(self, views: torch.Tensor) -> list[torch.Tensor]:
        """views [B, N, 3, H, W] -> flows from the base frame to each frame, [B·N, 2, H/2^l, W/2^l], l = 0, 1, 2."""
        nbr = views.flatten(0, 1)
        ref = views[:, :1].expand_as(views).flatten(0, 1)
        return self.spynet(ref, nbr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, nframes, 4, h, w] -> [B, out_chans, 8h, 8w]."""
        if x.dim() != 5 or x.shape[1:3] != (self.nframes, self.in_chans) or not x.is_floating_point():
            raise ValueError(f"BSRT expects a floating [B, {self.nframes}, {self.in_chans}, h, w] burst, "
                             f"got {x.dtype} of shape {tuple(x.shape)}")
        in_dtype, (b, n, c) = x.dtype, x.shape[:3]
        frames, size = pad_to_multiple(x.flatten(1, 2).to(self.conv_first.weight.dtype), self.size_multiple)
        h, w = frames.shape[-2:]
        frames = frames.view(b * n, c, h, w)
        act, ps = self.lrelu, self.skip_pixel_shuffle
        skip1 = act(ps(self.skipup1(ps(frames.view(b, n, c, h, w)[:, 0]))))
        skip2 = ps(self.skipup2(skip1))
        flows = self._ref_flows(self.conv_flow(self.flow_ps(frames)).view(b, n, 3, 2 * h, 2 * w))

        l1 = self.mid_ps(self.conv_after_pre_layer(self._swin(act(self.conv_first(frames)), self.pre_layers,
                                                               self.pre_norm, residual=False)))
        l2 = act(self.fea_L2_conv1(l1))
        l3 = act(self.toplayer(act(self.fea_L3_conv1(l2))))
        l2 = self.smooth1(_up2(l3) + self.latlayer1(l2))
        l1 = self.smooth2(_up2(l2) + self.latlayer2(l1))
        nbr = [l1, l2, l3]  # every frame, [B·N, 64, 2h/2^l, 2w/2^l]
        ref = [f.view(b, n, *f.shape[1:])[:, :1].expand(b, n, *f.shape[1:]).flatten(0, 1) for f in nbr]
        warped = [flow_warp(f, v).to(f.dtype) for f, v in zip(nbr, flows)]
        aligned = self.align(nbr, warped, ref, flows)  # all frames at once: the same as one by one

        x = act(self.fusion(aligned.reshape(b, n * NUM_FEAT, 2 * h, 2 * w)))
        x = act(self.conv_after_body(self._swin(x, self.layers, self.norm, residual=True))) + x
        x = act(self.pixel_shuffle(self.upconv1(x))) + skip1
        x = act(self.pixel_shuffle(self.upconv2(x)))
        x = self.conv_last(act(self.HRconv(x))) + skip2
        return crop_to(x, size, self.scale).to(in_dtype)


def bsrt_small(**overrides) -> BSRT:
    """BSRT-Small (official ``--model_level S``: embed_dim 60, depths [6] + [6]·4, 14 frames)."""
    return BSRT(**{**dict(embed_dim=60, depths=[6] * 5, num_heads=[6] * 5), **overrides})


def bsrt_large(**overrides) -> BSRT:
    """BSRT-Large (official ``--model_level L``: embed_dim 180, depths [6] + [8]·6, 14 frames)."""
    return BSRT(**{**dict(embed_dim=180, depths=[6] + [8] * 6, num_heads=[6] * 7), **overrides})


def load_bsrt_checkpoint(model: BSRT, path_or_dict, spynet_path=None, strict: bool = True) -> BSRT:
    """Load an official BSRT file (raw state dict, ``module.`` prefixes allowed) into ``model``.

    SpyNet weights missing from the file are taken from ``spynet_path`` (a SpyNet file, e.g.
    ``spynet_sintel_final-3d2a1287.pth``); the file's own ``spynet.*`` weights win, as in the official code,
    which loads SpyNet first and the BSRT file over it. The DCN weights need no change (see
    :func:`dcnv2_offset_mask`). Raises :class:`~dpir_fast.checkpoint_io.CheckpointError` on mismatches.
    """
    state = extract_state_dict(read_checkpoint(path_or_dict))
    spy = {"spynet." + k: v for k, v in model.spynet.state_dict().items() if k in ("mean", "std")}
    if spynet_path is not None:
        spy.update({"spynet." + k: v for k, v in extract_state_dict(read_checkpoint(spynet_path)).items()})
    state = {**spy, **state}
    return load_checkpoint(model, {"state_dict": state}, strict=strict)
