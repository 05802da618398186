"""Triton kernels of dpir_fast, installed as the package ``dpir_fast.kernels``.

sampler.py: the jump / ancestral / DDIM update with in-kernel noise and the next denoiser input;
fusion.py: FusionNet's convolutions as NHWC implicit GEMMs with fused epilogues; fusion_net.py: their
weight packing and launch sequence.
"""
from .fusion_net import fusion_forward, is_fusion_net, packed_fusion, unsupported_reason
from .sampler import affine_update, key_tensor

__all__ = ["affine_update", "fusion_forward", "is_fusion_net", "key_tensor", "packed_fusion", "unsupported_reason"]
