"""Tiny networks shared by the pipeline, checkpoint and CLI tests."""
from dpir_fast import DPIR
from dpir_fast.models import BSRT, FFTformer, FusionNet, MIRNet, SwinIR


def tiny_swinir(upscale: int = 2, **overrides) -> SwinIR:
    config = dict(upscale=upscale, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2],
                  mlp_ratio=2, upsampler="pixelshuffledirect")
    return SwinIR(**{**config, **overrides})


def tiny_pipeline(task: str | None = None, upscale: int = 2, **settings) -> DPIR:
    """float32 unless ``dtype`` says otherwise (the tests compare with float32 references; the CPU default is
    bf16 where the CPU has it)."""
    parts = (tiny_swinir(upscale), MIRNet(in_channels=4, out_channels=3, n_feat=8, n_rrg=1, n_msrb=1),
             FusionNet(n_feat=8, growth=4, time_hidden=8))
    settings = {"dtype": "fp32", **settings}
    return DPIR.preset(task, *parts, **settings) if task else DPIR(*parts, **{"tau": 3, **settings})


def tiny_fftformer(**overrides) -> FFTformer:
    return FFTformer(**{**dict(dim=8, num_blocks=[1, 1, 1], num_refinement_blocks=1), **overrides})


def tiny_bsrt(**overrides) -> BSRT:
    """BSRT with 2 frames, embed_dim 12, 2 + 2 Swin blocks, window 4 (token maps of 2h = img_size = 16)."""
    return BSRT(**{**dict(nframes=2, img_size=16, embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4),
                   **overrides})


def tiny_denoiser_fusion():
    return (MIRNet(in_channels=4, out_channels=3, n_feat=8, n_rrg=1, n_msrb=1),
            FusionNet(n_feat=8, growth=4, time_hidden=8))
