"""Training: the denoiser, a task's fusion network, and (for the demo) an IR network; one process or torchrun DDP.

``fit(task, TrainConfig(...), start_processes())`` runs any task; the CLI commands train-denoiser and
train-fusion build the tasks from folders of images.
"""
from .common import EMA, Processes, TrainError, start_processes, stop_processes
from .denoiser import DenoiserTask
from .fusion import FusionTask, degrade_image, ir_pair
from .ir import IRTask
from .loop import TrainConfig, fit, read_state

__all__ = ["DenoiserTask", "EMA", "FusionTask", "IRTask", "Processes", "TrainConfig", "TrainError", "degrade_image",
           "fit", "ir_pair", "read_state", "start_processes", "stop_processes"]
