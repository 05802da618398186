"""Reading checkpoint files and loading their weights into a network, robustly; atomic saves.

The bottom layer of checkpoint handling: it knows file layouts (official wrappers, ``module.`` prefixes, our own
records), not architectures or pipelines, so networks (BSRT, SpyNet) and the pipeline both build on it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

FORMAT, VERSION = "dpir_fast", 2   # 2: pipeline files keep ir_ensemble (version 1 files read as 1)
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")   # preference order
RECOMPUTED_BUFFERS = ("attn_mask", "relative_position_index")    # Swin buffers never trusted from files


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, another architecture, mismatched keys."""


def read_checkpoint(path_or_dict, map_location="cpu") -> dict:
    """The dict in a checkpoint file (or ``path_or_dict`` itself when it is one); CheckpointError otherwise."""
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
    obj = read_checkpoint(path_or_dict, map_location)
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
