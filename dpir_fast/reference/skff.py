"""Reference of MIRNet's selective kernel feature fusion in plain PyTorch: the oracle of the fused ``skff`` op."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .dau_tail import _conv_weight


def skff_ref(feats: Sequence[torch.Tensor], w_down: torch.Tensor, prelu: torch.Tensor,
             w_up: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_k a_k ⊙ feats[k] [B, C, H, W], the maths of ``models.mirnet.SKFF``.

    feats: the streams [B, C, H, W] (3 in MIRNet); U = Σ feats, z = PReLU(W_down · mean_HW U) with
    w_down [d, C, 1, 1] and prelu [1] (or [d]); a = softmax over k of W_up[k] · z, w_up[k] [C, d, 1, 1].
    Weights are cast to the features' dtype. NaN propagates (softmax keeps it): a NaN in any stream makes its whole
    image NaN; the fused op matches.
    """
    stacked = torch.stack(list(feats), 1)  # [B, K, C, H, W]
    dtype = stacked.dtype
    z = F.prelu(F.conv2d(stacked.sum(1).mean((2, 3), keepdim=True), _conv_weight(w_down, dtype)), prelu.to(dtype))
    attn = torch.softmax(torch.stack([F.conv2d(z, _conv_weight(w, dtype)) for w in w_up], 1), dim=1)
    return (stacked * attn).sum(1)
