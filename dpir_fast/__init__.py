"""dpir_fast: DP-IR (modular conditional diffusion for image reconstruction) in PyTorch."""
__version__ = "0.1.0"

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .pipeline import DPIR
from .schedule import Schedule

__all__ = ["CheckpointError", "DPIR", "Schedule", "__version__", "load_checkpoint", "save_checkpoint"]
