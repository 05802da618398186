"""Weights shipped inside the package (see MODEL_CARD.md here): ``DPIR.from_pretrained(name)``."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PRETRAINED = {"demo-sr4x": "demo_sr4x.pt"}  # name -> file in this folder
SAMPLE_IMAGE = HERE / "sample.png"  # 128×128 crop of a held-out CC0 photo (MODEL_CARD.md)


def pretrained_path(name: str) -> Path:
    """The file of the shipped pipeline ``name``; ValueError naming the known ones."""
    if name not in PRETRAINED:
        raise ValueError(f"no shipped weights named {name!r}; known: {sorted(PRETRAINED)}")
    path = HERE / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from this installation; reinstall dpir_fast "
                                "(the weights are package data)")
    return path
