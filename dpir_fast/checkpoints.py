"""Saving networks and whole pipelines with their architectures, and rebuilding networks from those records.

Own files are ``{"format": "dpir_fast", "version": 2, ...}`` records that hold each network's
architecture name and constructor config beside its weights, so one file rebuilds a pipeline
(:func:`dpir_fast.pipeline.load_pipeline`). Reading files and loading weights: :mod:`dpir_fast.checkpoint_io`.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .checkpoint_io import (FORMAT, VERSION, CheckpointError, atomic_save, extract_state_dict,  # noqa: F401
                            load_checkpoint, read_checkpoint)
from .models import ARCHITECTURES


def model_record(model: nn.Module) -> dict:
    """{"arch", "config", "state_dict"} of a network that :func:`build_model` rebuilds."""
    name = type(model).__name__
    if ARCHITECTURES.get(name) is not type(model) or not hasattr(model, "config"):
        raise CheckpointError(f"cannot save a {name} with its architecture: only {sorted(ARCHITECTURES)} "
                              "can be rebuilt from a file; save its state_dict() yourself instead")
    return {"arch": name, "config": dict(model.config),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def build_model(record: dict) -> nn.Module:
    """A network rebuilt from a saved record {"arch", "config", "state_dict"}."""
    if record.get("arch") not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {record.get('arch')!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[record["arch"]](**record["config"])
    return load_checkpoint(model, {"state_dict": record["state_dict"]})


def save_checkpoint(obj: nn.Module, path: str | Path) -> Path:
    """Save a network or a whole :class:`~dpir_fast.DPIR` (whatever has ``pipeline_record()``) with its
    architecture, atomically."""
    record = obj.pipeline_record() if hasattr(obj, "pipeline_record") else model_record(obj)
    record.update(format=FORMAT, version=VERSION)
    path = Path(path)
    atomic_save(record, path)
    return path
