"""The networks of DP-IR, one per file; ARCHITECTURES maps saved names to classes."""
from .fusion import FusionNet
from .mirnet import MIRNet, mirnet_s
from .swinir import SwinIR, swinir_classical_sr4, swinir_lightweight_sr4

ARCHITECTURES = {cls.__name__: cls for cls in (MIRNet, SwinIR, FusionNet)}

__all__ = ["ARCHITECTURES", "FusionNet", "MIRNet", "SwinIR", "mirnet_s", "swinir_classical_sr4",
           "swinir_lightweight_sr4"]
