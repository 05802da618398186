"""What every dpir-fast command shares: the usage error, the --device argument, the torchrun shard."""
from __future__ import annotations

import argparse
import os
import re

import torch


class UsageError(Exception):
    """An expected error that ends the command with exit code 2 and a message, no traceback."""


def torchrun_shard() -> tuple[int, int, int]:
    """(rank, world, local_rank) under torchrun (its RANK/WORLD_SIZE/LOCAL_RANK), else (0, 1, 0)."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def resolve_device(name: str) -> str:
    """The device a --device value names; under torchrun, "auto"/"cuda" is GPU LOCAL_RANK, made current."""
    rank, world, local = torchrun_shard()
    if world > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        name = f"cuda:{local % torch.cuda.device_count()}"  # one GPU per process
        torch.cuda.set_device(name)   # kernels and graphs that follow the current device use this one
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def device_arg(text: str) -> str:
    """argparse type of --device: auto, cpu, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    return text
