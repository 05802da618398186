"""Plain-PyTorch reference of every fused op and of the samplers (the oracle of the fast path)."""
from .dau_tail import dau_tail_ref
from .fusion import fusion_ref, fusion_step_ref
from .noise import draw_noise, noise_keys, philox4x32, philox_randn
from .sampler import (SamplerUpdate, ancestral_step_ref, ancestral_update, ddim_step_ref, ddim_update,
                      denoiser_input_ref, dpir_sample_ref, jump_ref, jump_update, sample_timesteps,
                      sampler_update_ref)
from .skff import skff_ref

__all__ = ["SamplerUpdate", "ancestral_step_ref", "ancestral_update", "dau_tail_ref", "ddim_step_ref", "ddim_update",
           "denoiser_input_ref", "dpir_sample_ref", "draw_noise", "fusion_ref", "fusion_step_ref", "jump_ref",
           "jump_update", "noise_keys", "philox4x32", "philox_randn", "sample_timesteps", "sampler_update_ref",
           "skff_ref"]
