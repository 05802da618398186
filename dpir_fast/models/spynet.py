"""SpyNet optical flow (Ranjan & Black, CVPR 2017) as BSRT uses it, and flow warping.

Own implementation of the structure BSRT (Algolzw/BSRT ``model/bsrt.py``) and BasicSR share: six
pyramid levels of a 5-conv basic module, ImageNet normalisation, inputs resized to a multiple of 32.
State-dict keys ``basic_module.{level}.basic_module.{0,2,4,6,8}.*`` plus the ``mean``/``std`` buffers;
pretrained files (``spynet_sintel_final-3d2a1287.pth``) are ``{"params": state_dict}`` without the buffers.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint_io import extract_state_dict, load_checkpoint, read_checkpoint

LEVELS = 6


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Backward-warp x [N, C, H, W] by flow [N, 2, H, W] (pixels, channel 0 = Δx, 1 = Δy).

    out[:, :, i, j] = x at (j + Δx, i + Δy), bilinear, align_corners=True; computed in float32
    (the official ``flow_warp``), returned in float32.
    """
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    flow = flow.float()
    gx = 2.0 * (xs + flow[:, 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[:, 1]) / max(h - 1, 1) - 1.0
    with torch.autocast(x.device.type, enabled=False):
        return F.grid_sample(x.float(), torch.stack((gx, gy), dim=3), mode="bilinear", padding_mode=padding_mode,
                             align_corners=True)


class BasicModule(nn.Module):
    """[ref, warped supp, upsampled flow] (8 channels) -> flow residual (2 channels); five 7×7 convs."""

    def __init__(self):
        super().__init__()
        chans = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for i in range(5):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 7, 1, 3))
            if i < 4:
                layers.append(nn.ReLU())
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x):
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Coarse-to-fine flow from ``ref`` to ``supp`` (the flow that warps supp onto ref).

    ``return_levels``: pyramid levels (0 coarsest … 5 full size) whose flow is returned; level l comes out
    at 1/2^(5−l) of the input size. forward(ref, supp [N, 3, H, W] in [0, 1]) -> list of [N, 2, H/s, W/s]
    flows, finest first (a single tensor when one level is asked for).
    """

    def __init__(self, return_levels=(5,)):
        super().__init__()
        self.return_levels = tuple(return_levels)
        self.basic_module = nn.ModuleList([BasicModule() for _ in range(LEVELS)])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, ref: torch.Tensor, supp: torch.Tensor):
        if ref.shape != supp.shape:
            raise ValueError(f"ref and supp differ in shape: {tuple(ref.shape)} vs {tuple(supp.shape)}")
        h, w = ref.shape[-2:]
        hf, wf = 32 * math.ceil(h / 32), 32 * math.ceil(w / 32)
        pyramids = []
        for img in (ref, supp):
            img = F.interpolate(img, size=(hf, wf), mode="bilinear", align_corners=False)
            levels = [(img - self.mean.to(img.dtype)) / self.std.to(img.dtype)]
            for _ in range(LEVELS - 1):
                levels.insert(0, F.avg_pool2d(levels[0], 2, 2, count_include_pad=False))
            pyramids.append(levels)
        # Level sizes double exactly (hf, wf are multiples of 32), and the coarsest upsampled flow is zero.
        flow = ref.new_zeros(ref.shape[0], 2, *pyramids[0][0].shape[-2:])
        flows = []
        for level, (r, s) in enumerate(zip(*pyramids)):
            if level > 0:
                flow = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(s, flow, padding_mode="border").to(r.dtype)
            flow = self.basic_module[level](torch.cat([r, warped, flow.to(r.dtype)], 1)) + flow
            if level in self.return_levels:
                scale = 2 ** (LEVELS - 1 - level)
                out = F.interpolate(flow, size=(h // scale, w // scale), mode="bilinear", align_corners=False)
                gain = torch.tensor([(w // scale) / (wf // scale), (h // scale) / (hf // scale)],
                                    dtype=out.dtype, device=out.device)
                flows.insert(0, out * gain.view(1, 2, 1, 1))
        return flows[0] if len(flows) == 1 else flows

    def load_pretrained(self, path_or_dict) -> "SpyNet":
        """Load a SpyNet file ({"params": ...} or raw); the mean/std buffers are constants, kept."""
        state = extract_state_dict(read_checkpoint(path_or_dict))
        state = {**{k: v for k, v in self.state_dict().items() if k in ("mean", "std")}, **state}
        return load_checkpoint(self, {"state_dict": state})
