"""Plain-PyTorch reference of every fused op and of the samplers (the oracle of the fast path)."""
from .noise import draw_noise, noise_offsets, philox4x32, philox_randn
from .sampler import (ancestral_step_ref, ddim_step_ref, denoiser_input_ref, dpir_sample_ref, jump_ref,
                      sample_timesteps)

__all__ = ["ancestral_step_ref", "ddim_step_ref", "denoiser_input_ref", "dpir_sample_ref", "draw_noise",
           "jump_ref", "noise_offsets", "philox4x32", "philox_randn", "sample_timesteps"]
