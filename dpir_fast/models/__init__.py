"""The networks of DP-IR, one per file; ARCHITECTURES maps saved names to classes."""
from .compact_sr import CompactSR
from .compact_unet import CompactUNet
from .bsrt import BSRT, bsrt_large, bsrt_small, load_bsrt_checkpoint
from .fftformer import FFTformer, fftformer_gopro
from .fusion import FusionNet
from .mirnet import MIRNet, mirnet_s
from .swinir import SwinIR, swinir_classical_sr4, swinir_lightweight_sr4

ARCHITECTURES = {cls.__name__: cls for cls in (MIRNet, SwinIR, FusionNet, FFTformer, BSRT, CompactSR, CompactUNet)}

__all__ = ["ARCHITECTURES", "BSRT", "CompactSR", "CompactUNet", "FFTformer", "FusionNet", "MIRNet", "SwinIR",
           "bsrt_large", "bsrt_small",
           "fftformer_gopro", "load_bsrt_checkpoint", "mirnet_s", "swinir_classical_sr4", "swinir_lightweight_sr4"]
