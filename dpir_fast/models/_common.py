"""Helpers shared by the network definitions: size padding, the saved-config record, the flips and transpositions
of an image (self-ensembles and training crops)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` [B, C, H, W] on the bottom/right to a multiple of ``multiple``.

    Reflection is used when the image is large enough for it (as the official test scripts do);
    an image smaller than the pad falls back to edge replication instead of failing.
    Returns the padded tensor and the original (H, W) for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int], scale: int = 1) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on an output that is ``scale`` times the input size."""
    h, w = size
    return x[..., : h * scale, : w * scale]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/transpositions of x [..., H, W] (k in 0..7): its bits flip left-right (1), flip
    up-down (2), then transpose (4); k = 0 is x itself. :func:`undo_dihedral` maps an output back."""
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x.transpose(-1, -2) if k & 4 else x


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k), k) == x``."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 2:
        x = x.flip(-2)
    return x.flip(-1) if k & 1 else x


def check_image_batch(x: torch.Tensor, channels: int, name: str) -> None:
    """A ValueError naming ``name`` unless x is a floating [B, channels, H, W] tensor."""
    if x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        raise ValueError(f"{name} expects a floating [B, {channels}, H, W] tensor, "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
