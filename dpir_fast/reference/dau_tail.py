"""Reference of MIRNet's DAU attention tail in plain PyTorch: the oracle of the fused ``dau_tail`` op."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _conv_weight(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 1×1 convolution weight [out, in, 1, 1] (a matrix [out, in] is accepted) in ``dtype``."""
    return (w if w.dim() == 4 else w.reshape(*w.shape, 1, 1)).to(dtype)


def dau_tail_ref(r: torch.Tensor, x: torch.Tensor, w_sa: torch.Tensor, w_ca_down: torch.Tensor,
                 w_ca_up: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """x + conv1x1(cat[SA(r), CA(r)]) [B, C, H, W], the maths of ``models.mirnet.DAU.tail``.

    r (the DAU body's output), x (the DAU input) [B, C, H, W]; w_sa [1, 2, 5, 5] (spatial attention over
    [max_C r, mean_C r]); w_ca_down [C/8, C, 1, 1], w_ca_up [C, C/8, 1, 1] (channel attention); w_out [C, 2C, 1, 1].
    Weights are cast to r's dtype, as a module converted to that dtype would hold them. NaN propagates (amax and
    relu keep it): a NaN in r makes its whole image NaN, a NaN in x only its own output; the fused op matches.
    """
    pooled = torch.cat([r.amax(1, keepdim=True), r.mean(1, keepdim=True)], 1)
    sa = r * torch.sigmoid(F.conv2d(pooled, w_sa.to(r.dtype), padding=2))
    hidden = F.relu(F.conv2d(r.mean((2, 3), keepdim=True), _conv_weight(w_ca_down, r.dtype)))
    ca = r * torch.sigmoid(F.conv2d(hidden, _conv_weight(w_ca_up, r.dtype)))
    return x + F.conv2d(torch.cat([sa, ca], 1), _conv_weight(w_out, r.dtype))
