"""MIRNet (Zamir et al., ECCV 2020) and MIRNet-S, the DP-IR Gaussian denoiser.

Module names, state-dict keys and weight tying follow the official swz30/MIRNet code, so its checkpoints load
unchanged. The tying (reproduced on purpose, it is what the checkpoints were trained with):

1. both columns of an MSRB apply the same DAU object (``blocks[i][0] is blocks[i][1]``);
2. the level-0 SKFF also performs the MSRB's final aggregation;
3. one scalar PReLU is the activation of every DAU of a network (official: a default-argument instance; here one
   per MIRNet, so two networks do not share it).

As in the official code, ``bias`` and ``kernel_size`` only reach conv_in, conv_out and each MSRB's conv_out; every
other convolution is 3×3/1×1 without bias.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .._backend import check_choice
from ._common import crop_to, pad_to_multiple


def _conv(c_in: int, c_out: int, k: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)


class BlurDownsample(nn.Module):
    """Anti-aliased ×2 downsampling: reflect pad 1, depthwise [1,2,1]⊗[1,2,1]/16, stride 2.

    The filter is the persistent buffer ``filt`` [C, 1, 3, 3], as in the official checkpoints.
    """

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (torch.outer(a, a) / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class SpatialAttention(nn.Module):
    """r [B, C, H, W] → r · sigmoid(conv5×5([max_C r, mean_C r])). Key: ``spatial.conv.weight``."""

    def __init__(self):
        super().__init__()
        self.spatial = nn.Module()
        self.spatial.conv = nn.Conv2d(2, 1, 5, padding=2, bias=False)

    def scale(self, r: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([r.amax(1, keepdim=True), r.mean(1, keepdim=True)], 1)
        return torch.sigmoid(self.spatial.conv(pooled))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r * self.scale(r)


class ChannelAttention(nn.Module):
    """r [B, C, H, W] → r · sigmoid(1×1(ReLU(1×1(avgpool r)))), bottleneck C // reduction."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def scale(self, r: torch.Tensor) -> torch.Tensor:
        return self.conv_du(r.mean((2, 3), keepdim=True))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r * self.scale(r)


class DAU(nn.Module):
    """Dual attention unit: x [B, C, H, W] → x + conv1x1(cat[SA(r), CA(r)]), r = body(x), same shape.

    ``act`` is the PReLU shared by all DAUs of the network. ``backend`` picks the tail's implementation
    (``ops.dau_tail``: the fused extension op in inference, the reference under autograd).
    """

    backend = "auto"

    def __init__(self, channels: int, act: nn.Module):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 3), act, _conv(channels, channels, 3))
        self.SA = SpatialAttention()
        self.CA = ChannelAttention(channels)
        self.conv1x1 = nn.Conv2d(2 * channels, channels, 1, bias=False)

    def tail(self, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The attention tail (the part a fused op replaces): x + conv1x1(cat[SA(r), CA(r)])."""
        return ops.dau_tail(r, x, self.SA.spatial.conv.weight, self.CA.conv_du[0].weight, self.CA.conv_du[2].weight,
                            self.conv1x1.weight, backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x), x)


class SKFF(nn.Module):
    """Selective kernel feature fusion of ``height`` inputs [B, C, H, W] → [B, C, H, W].

    U = Σ inputs, Z = PReLU(1×1(avgpool U)), a_k = softmax_k(fcs[k](Z)), out = Σ a_k · input_k, through
    ``ops.skff`` with ``backend``.
    """

    backend = "auto"

    def __init__(self, channels: int, height: int = 3, reduction: int = 8):
        super().__init__()
        d = max(channels // reduction, 4)
        self.height = height
        self.conv_du = nn.Sequential(nn.Conv2d(channels, d, 1, bias=False), nn.PReLU())
        self.fcs = nn.ModuleList(nn.Conv2d(d, channels, 1, bias=False) for _ in range(height))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return ops.skff(feats, self.conv_du[0].weight, self.conv_du[1].weight, [fc.weight for fc in self.fcs],
                        backend=self.backend)


class ResidualDownSample(nn.Module):
    """[B, C, H, W] → [B, 2C, H/2, W/2]: conv/PReLU/blur branch (``top``) + blur branch (``bot``)."""

    def __init__(self, c: int):
        super().__init__()
        self.top = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False), nn.PReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.PReLU(),
            BlurDownsample(c), nn.Conv2d(c, 2 * c, 1, bias=False),
        )
        self.bot = nn.Sequential(BlurDownsample(c), nn.Conv2d(c, 2 * c, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class ResidualUpSample(nn.Module):
    """[B, C, H, W] → [B, C/2, 2H, 2W]: transposed-conv branch (``top``) + bilinear branch (``bot``)."""

    def __init__(self, c: int):
        super().__init__()
        self.top = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False), nn.PReLU(),
            nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1, bias=False), nn.PReLU(),
            nn.Conv2d(c, c // 2, 1, bias=False),
        )
        self.bot = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(c, c // 2, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class DownSample(nn.Module):
    """[B, C, H, W] → [B, C·2^n, H/2^n, W/2^n] with 2^n = ``scale``."""

    def __init__(self, c: int, scale: int):
        super().__init__()
        n = scale.bit_length() - 1
        self.body = nn.Sequential(*(ResidualDownSample(c * 2**i) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UpSample(nn.Module):
    """[B, C, H, W] → [B, C/2^n, H·2^n, W·2^n] with 2^n = ``scale``."""

    def __init__(self, c: int, scale: int):
        super().__init__()
        n = scale.bit_length() - 1
        self.body = nn.Sequential(*(ResidualUpSample(c // 2**i) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MSRB(nn.Module):
    """Multi-scale residual block: [B, C, H, W] → same; ``height`` streams at C·2^j channels, 1/2^j resolution.

    Resamplers are keyed ``"{channels}_{factor}"`` as in the official code: ``down`` for the finer streams,
    ``up`` for the coarser ones, ``last_up[str(j)]`` for the final aggregation.
    """

    def __init__(self, n_feat: int, height: int, width: int, act: nn.Module, bias: bool = False):
        super().__init__()
        self.height, self.width = height, width
        feats = [n_feat * 2**j for j in range(height)]
        self.blocks = nn.ModuleList(nn.ModuleList([DAU(c, act)] * width) for c in feats)
        self.last_up = nn.ModuleDict({str(j): UpSample(feats[j], 2**j) for j in range(1, height)})
        self.down = nn.ModuleDict(
            {f"{c}_{2**s}": DownSample(c, 2**s) for j, c in enumerate(feats) for s in range(height - 1 - j, 0, -1)}
        )
        self.up = nn.ModuleDict(
            {f"{c}_{2**s}": UpSample(c, 2**s) for j, c in reversed(list(enumerate(feats))) for s in range(j, 0, -1)}
        )
        self.conv_out = _conv(n_feat, n_feat, 3, bias)
        self.selective_kernel = nn.ModuleList(SKFF(c, height) for c in feats)

    def _resize(self, t: torch.Tensor, src: int, dst: int) -> torch.Tensor:
        """Move stream ``src``'s features to stream ``dst``'s resolution and width."""
        if src == dst:
            return t
        resampler = self.up if src > dst else self.down
        return resampler[f"{t.shape[1]}_{2 ** abs(src - dst)}"](t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1. first column: each stream starts from the previous one, downsampled ×2
        streams, h = [], x
        for j in range(self.height):
            h = self.blocks[j][0](h if j == 0 else self.down[f"{h.shape[1]}_2"](h))
            streams.append(h)
        # 2. further columns: every stream fuses all streams (SKFF), then its (shared) DAU
        for i in range(1, self.width):
            fused = [
                self.selective_kernel[j]([self._resize(s, k, j) for k, s in enumerate(streams)])
                for j in range(self.height)
            ]
            streams = [self.blocks[j][i](f) for j, f in enumerate(fused)]
        # 3. aggregate at full resolution with the level-0 SKFF (official reuse)
        out = self.selective_kernel[0]([streams[0]] + [self.last_up[str(j)](streams[j]) for j in range(1, self.height)])
        return x + self.conv_out(out)


class RRG(nn.Module):
    """Recursive residual group: [B, C, H, W] → x + conv3×3(MSRB^n(x))."""

    def __init__(self, n_feat: int, n_msrb: int, height: int, width: int, act: nn.Module, bias: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            *(MSRB(n_feat, height, width, act, bias) for _ in range(n_msrb)), _conv(n_feat, n_feat, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MIRNet(nn.Module):
    """MIRNet: x [B, in_channels, H, W] → [B, out_channels, H, W], any H, W (padded to ``size_multiple``).

    out = conv_out(body(conv_in(x))) + x[:, :out_channels]; for the 4-channel denoiser input [x̃_t, σ̃_t] the
    residual adds x̃_t. ``backend`` (not part of ``config``) selects the DAU/SKFF implementation, see ``_backend``.
    """

    size_multiple = 4

    def __init__(
        self, in_channels: int = 3, out_channels: int = 3, n_feat: int = 64, kernel_size: int = 3, stride: int = 2,
        n_rrg: int = 3, n_msrb: int = 2, height: int = 3, width: int = 2, bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if stride != 2:
            raise ValueError(f"MIRNet supports stride=2 only (the official resampler keys assume it), got {stride}")
        if out_channels > in_channels:
            raise ValueError(f"global residual needs in_channels >= out_channels, got {in_channels} < {out_channels}")
        if height < 1 or width < 1 or n_feat < 8:
            raise ValueError(f"need height >= 1, width >= 1, n_feat >= 8; got {height}, {width}, {n_feat}")
        self.config = dict(
            in_channels=int(in_channels), out_channels=int(out_channels), n_feat=int(n_feat),
            kernel_size=int(kernel_size), stride=int(stride), n_rrg=int(n_rrg), n_msrb=int(n_msrb),
            height=int(height), width=int(width), bias=bool(bias),
        )
        if height > 3:
            self.size_multiple = 2 ** (height - 1)
        act = nn.PReLU()  # the one DAU activation, registered only inside the DAUs (no key of its own)
        self.conv_in = _conv(in_channels, n_feat, kernel_size, bias)
        self.body = nn.Sequential(*(RRG(n_feat, n_msrb, height, width, act, bias) for _ in range(n_rrg)))
        self.conv_out = _conv(n_feat, out_channels, kernel_size, bias)
        self.backend = backend

    @property
    def backend(self) -> str:
        """The implementation of the DAU tails and SKFFs: "auto", "reference", "ext" or "fast"."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_choice(value)
        for module in self.modules():
            if isinstance(module, (DAU, SKFF)):
                module.backend = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in = self.config["in_channels"]
        if x.dim() != 4 or x.shape[1] != c_in:
            raise ValueError(f"MIRNet expects input [B, {c_in}, H, W], got shape {list(x.shape)}")
        xp, size = pad_to_multiple(x, self.size_multiple)
        out = self.conv_out(self.body(self.conv_in(xp))) + xp[:, : self.config["out_channels"]]
        return crop_to(out, size)


def mirnet_s(**overrides) -> MIRNet:
    """MIRNet-S, the DP-IR denoiser: input [x̃_t, σ̃_t] (4 channels), 3 RRG × 1 MSRB, 15.95 M parameters."""
    config = dict(in_channels=4, out_channels=3, n_rrg=3, n_msrb=1)
    config.update(overrides)
    return MIRNet(**config)
