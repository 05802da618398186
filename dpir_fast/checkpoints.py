"""Loading official and own checkpoints robustly, and saving models and whole pipelines.

Own files are ``{"format": "dpir_fast", "version": 1, ...}`` records that hold each network's
architecture name and constructor config beside its weights, so one file rebuilds a pipeline.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

FORMAT, VERSION = "dpir_fast", 1
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")   # preference order
RECOMPUTED_BUFFERS = ("attn_mask", "relative_position_index")    # Swin buffers never trusted from files


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, another architecture, mismatched keys."""


def _read(path_or_dict, map_location="cpu") -> dict:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    path = Path(path_or_dict)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch.load on a damaged file fails in many ways (KeyError too)
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no detail'}); is it the "
                              "right, fully downloaded file?") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    return obj


def extract_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint dict: params_ema > params > state_dict > model > the raw dict.

    A ``module.`` prefix (DataParallel/DDP saves) is removed.
    """
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise CheckpointError(f"no tensors found in the checkpoint (top-level keys: {sorted(obj)[:8]})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _diagnose(model: nn.Module, missing: list[str], unexpected: list[str], n_expected: int) -> str:
    name = type(model).__name__
    lines = [f"the checkpoint does not fit this {name}: {len(missing)} missing keys "
             f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
             f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."]
    if len(missing) > n_expected // 2:
        lines.append("Most keys are missing: this is likely a checkpoint of another architecture or task "
                     "(for example a denoiser file given as the IR network), or the wrong file.")
    elif any(k.split(".")[0] in ("upsample", "conv_up1", "conv_up2", "conv_hr", "conv_before_upsample")
             for k in missing + unexpected):
        lines.append("The upsampler keys differ: the checkpoint was likely trained for another scale or "
                     "upsampler; build the model with the checkpoint's upscale/upsampler.")
    else:
        lines.append("The layer counts differ: build the model with the configuration the checkpoint was "
                     "trained with (depths, n_rrg, n_msrb, ...).")
    return " ".join(lines)


def load_checkpoint(model: nn.Module, path_or_dict, strict: bool = True, map_location="cpu") -> nn.Module:
    """Load weights into ``model`` from a file or dict in any supported layout; returns the model.

    Official layouts (``params_ema``/``params``/``state_dict`` wrappers, ``module.`` prefixes) and our
    own records load. Swin ``attn_mask``/``relative_position_index`` buffers are recomputed by the model,
    never taken from the file. Mismatches raise :class:`CheckpointError` naming the keys and the likely cause.
    """
    obj = _read(path_or_dict, map_location)
    if obj.get("format") == FORMAT and "arch" in obj and obj["arch"] != type(model).__name__:
        raise CheckpointError(f"this checkpoint holds a {obj['arch']}, not a {type(model).__name__}")
    state = extract_state_dict(obj)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.endswith(RECOMPUTED_BUFFERS)}
    missing = [k for k in expected if k not in state and not k.endswith(RECOMPUTED_BUFFERS)]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        raise CheckpointError(_diagnose(model, missing, unexpected, len(expected)))
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and v.shape != expected[k].shape and not k.endswith(RECOMPUTED_BUFFERS)]
    if shapes:
        raise CheckpointError(f"{len(shapes)} tensors have other shapes than this {type(model).__name__} "
                              f"({'; '.join(shapes[:3])}): the checkpoint was trained with another width "
                              "(embed_dim/n_feat/channels); build the model with its configuration.")
    model.load_state_dict(state, strict=False)
    return model


# Saving and rebuilding --------------------------------------------------------------------------
def _model_record(model: nn.Module) -> dict:
    from .models import ARCHITECTURES
    name = type(model).__name__
    if ARCHITECTURES.get(name) is not type(model) or not hasattr(model, "config"):
        raise CheckpointError(f"cannot save a {name} with its architecture: only {sorted(ARCHITECTURES)} "
                              "can be rebuilt from a file; save its state_dict() yourself instead")
    return {"arch": name, "config": dict(model.config),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def build_model(record: dict) -> nn.Module:
    """A network rebuilt from a saved record {"arch", "config", "state_dict"}."""
    from .models import ARCHITECTURES
    if record.get("arch") not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {record.get('arch')!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[record["arch"]](**record["config"])
    return load_checkpoint(model, {"state_dict": record["state_dict"]})


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: an interrupted save leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(obj: nn.Module, path: str | Path) -> Path:
    """Save a network or a whole :class:`~dpir_fast.DPIR` with its architecture, atomically."""
    from .pipeline import DPIR, SAMPLER_SETTINGS
    if isinstance(obj, DPIR):
        record = {"pipeline": {k: obj.settings[k] for k in SAMPLER_SETTINGS},
                  "schedule": obj.schedule.config(),
                  **{part: _model_record(getattr(obj, part)) for part in ("ir", "denoiser", "fusion")}}
    else:
        record = _model_record(obj)
    record.update(format=FORMAT, version=VERSION)
    path = Path(path)
    atomic_save(record, path)
    return path


def load_pipeline(path_or_dict):
    """The :class:`~dpir_fast.DPIR` saved in one file by :func:`save_checkpoint`."""
    from .pipeline import DPIR
    from .schedule import Schedule
    obj = _read(path_or_dict)
    if obj.get("format") != FORMAT or "pipeline" not in obj:
        what = f"a single {obj['arch']}" if "arch" in obj else "no dpir_fast pipeline"
        raise CheckpointError(f"this file holds {what}; a pipeline file is written by "
                              "dpir_fast.save_checkpoint(pipe, path) for a DPIR pipeline")
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"the file has format version {obj['version']}, newer than this dpir_fast "
                              f"reads ({VERSION}); upgrade dpir_fast")
    parts = {part: build_model(obj[part]) for part in ("ir", "denoiser", "fusion")}
    return DPIR(**parts, schedule=Schedule.from_config(obj["schedule"]), **obj["pipeline"])
