"""Helpers shared by the network definitions: size padding and the saved-config record."""
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


def check_image_batch(x: torch.Tensor, channels: int, name: str) -> None:
    """A ValueError naming ``name`` unless x is a floating [B, channels, H, W] tensor."""
    if x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        raise ValueError(f"{name} expects a floating [B, {channels}, H, W] tensor, "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
