"""Test setup: Triton kernels run on CPU tensors through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before Triton is first imported, hence here, before anything else.
"""
import os
import shutil

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """The device the Triton kernels run on in this session (CPU tensors under the interpreter)."""
    return DEVICE
