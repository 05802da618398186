"""FusionNet: E[x0 | y, x_t] ≈ Fusion(IR(y), Denoiser(x̃_t, σ̃_t), t), the part DP-IR trains per task.

Our reading of the paper (DESIGN.md §3): a shared encoder (conv3×3 + one dense block) applied to both
estimates, a time branch (sinusoidal t → Linear → ReLU → Linear → sigmoid) giving per-channel
weights w, the 3CA mix w⊙f_IR + (1 − w)⊙f_D, and a decoder of two dense blocks and a conv3×3.
Every open choice is a constructor argument.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_ACTIVATIONS = {"relu": F.relu, "lrelu": lambda x: F.leaky_relu(x, 0.2)}
PADDINGS = ("zeros", "replicate", "reflect")   # nn.Conv2d's padding_mode; kernels/fusion.py has all three


class DenseBlock(nn.Module):
    """Five 3×3 convs with dense connections; the fifth maps back to ``n_feat``; x + scale·out."""

    def __init__(self, n_feat: int, growth: int, act: str = "relu", res_scale: float = 0.2, padding: str = "zeros"):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(n_feat + i * growth, growth if i < 4 else n_feat, 3, padding=1,
                                             padding_mode=padding) for i in range(5))
        self.act = _ACTIVATIONS[act]
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs[:4]:
            feats.append(self.act(conv(torch.cat(feats, 1))))
        return x + self.res_scale * self.convs[4](torch.cat(feats, 1))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal encoding [B, dim] of timesteps t [B]: [sin(t·f_k), cos(t·f_k)], f_k = P^(−k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class FusionNet(nn.Module):
    """Fuse the IR estimate and the denoiser estimate at timestep t into x0̂.

    forward(x_ir [B, C, H, W], x_den [B, C, H, W], t: int or [B]) → x0̂ [B, C, H, W].
    ``residual="ir"`` adds the decoder output to x_IR (so a zero last conv returns the IR estimate);
    ``"none"`` returns the decoder output as is. Defaults give 731,267 parameters (paper: 0.73 M).
    ``padding``: how every 3×3 conv pads its input. "zeros" (the default, as the paper's code would) makes the
    borders of a flat image differ from its inside, which training must then undo; "replicate" and "reflect"
    keep a flat input flat through every layer, so the output's offset is the same at borders and inside.
    """

    size_multiple = 1

    def __init__(self, in_channels: int = 3, n_feat: int = 64, growth: int = 32, time_dim: int = 64,
                 time_hidden: int = 64, n_decoder_blocks: int = 2, act: str = "relu",
                 res_scale: float = 0.2, residual: str = "ir", padding: str = "zeros"):
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        if residual not in ("ir", "none"):
            raise ValueError(f"residual must be 'ir' or 'none', got {residual!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        self.config = dict(in_channels=in_channels, n_feat=n_feat, growth=growth, time_dim=time_dim,
                           time_hidden=time_hidden, n_decoder_blocks=n_decoder_blocks, act=act,
                           res_scale=res_scale, residual=residual, padding=padding)
        self.conv_in = nn.Conv2d(in_channels, n_feat, 3, padding=1, padding_mode=padding)
        self.encoder = DenseBlock(n_feat, growth, act, res_scale, padding)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_hidden), nn.ReLU(),
                                      nn.Linear(time_hidden, n_feat))
        self.decoder = nn.Sequential(*(DenseBlock(n_feat, growth, act, res_scale, padding)
                                       for _ in range(n_decoder_blocks)))
        self.conv_out = nn.Conv2d(n_feat, in_channels, 3, padding=1, padding_mode=padding)

    def time_weights(self, t: torch.Tensor | int, batch: int = 1) -> torch.Tensor:
        """The 3CA weights w [B, n_feat] in (0, 1) of timesteps t (an int, or a tensor [B])."""
        t = torch.as_tensor(t, device=self.conv_in.weight.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        elif t.numel() != batch:
            raise ValueError(f"need one timestep or one per image ({batch}), got {t.numel()}")
        emb = timestep_embedding(t, self.config["time_dim"]).to(self.conv_in.weight.dtype)
        return torch.sigmoid(self.time_mlp(emb))

    def forward(self, x_ir: torch.Tensor, x_den: torch.Tensor, t) -> torch.Tensor:
        if x_ir.shape != x_den.shape:
            raise ValueError(f"FusionNet needs two estimates of one shape, got {tuple(x_ir.shape)} "
                             f"and {tuple(x_den.shape)}")
        batch = x_ir.shape[0]
        w = self.time_weights(t, batch)[:, :, None, None]
        feats = self.encoder(self.conv_in(torch.cat([x_ir, x_den], 0)))
        f_ir, f_den = feats[:batch], feats[batch:]
        out = self.conv_out(self.decoder(w * f_ir + (1.0 - w) * f_den))
        return out + x_ir if self.config["residual"] == "ir" else out
