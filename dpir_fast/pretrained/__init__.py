"""Weights shipped inside the package (see MODEL_CARD.md here): ``DPIR.from_pretrained(name)``."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PRETRAINED = {"demo-sr4x": "demo_sr4x.pt", "demo-deblur": "demo_deblur.pt"}  # name -> file in this folder
SAMPLE_IMAGE = HERE / "sample.png"  # 128×128 crop of a held-out CC0 photo (MODEL_CARD.md)


def checkpoint_path(path_or_name: str | Path) -> Path:
    """A pipeline file given by its path or by a shipped name ("demo-sr4x", "demo-deblur"); FileNotFoundError
    naming both."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if str(path_or_name) in PRETRAINED:
        return pretrained_path(str(path_or_name))
    raise FileNotFoundError(f"checkpoint {path_or_name} is neither a file nor a shipped pipeline "
                            f"(shipped: {', '.join(sorted(PRETRAINED))}); pass a .pt file written by "
                            "dpir_fast.save_checkpoint or one of those names")


def pretrained_path(name: str) -> Path:
    """The file of the shipped pipeline ``name``; ValueError naming the known ones."""
    if name not in PRETRAINED:
        raise ValueError(f"no shipped weights named {name!r}; known: {sorted(PRETRAINED)}")
    path = HERE / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from this installation; reinstall dpir_fast "
                                "(the weights are package data)")
    return path
