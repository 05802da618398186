"""Public fused ops; each dispatches to the CUDA extension / Triton / the reference through _backend.resolve"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import _backend
from .reference.dau_tail import dau_tail_ref
from .reference.fusion import fusion_ref
from .reference.sampler import SamplerUpdate, ancestral_update, ddim_update, jump_update, sampler_update_ref
from .reference.skff import skff_ref
from .schedule import Schedule


# Sampler and fusion ops (Triton) ------------------------------------------------------------------
def _kernels():
    """dpir_fast.kernels, imported on first use (kernels/ beside the package in an uninstalled checkout)."""
    try:
        return importlib.import_module("dpir_fast.kernels")
    except ModuleNotFoundError:
        src = Path(__file__).resolve().parent.parent / "kernels"
        spec = importlib.util.spec_from_file_location("dpir_fast.kernels", src / "__init__.py",
                                                      submodule_search_locations=[str(src)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["dpir_fast.kernels"] = module
        spec.loader.exec_module(module)
        return module


def _triton(x: torch.Tensor, backend: str, *tensors) -> bool:
    """Whether the Triton kernels run for ``x``'s device: never when autograd wants gradients through
    ``tensors`` (the kernels are forward-only): the reference then, or an error when Triton was asked for."""
    if _backend.resolve("triton", x.device, backend) != "triton":
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        if backend != "auto":
            raise RuntimeError(f"backend {backend!r}: the Triton kernels are forward-only; call them under "
                               "torch.no_grad() or use backend='reference' for gradients")
        return False
    return True


def _write(result, out: torch.Tensor | None, den_out: torch.Tensor | None):
    """The reference's (x_next[, den]) copied into the caller's buffers when given."""
    x_next, den = result if isinstance(result, tuple) else (result, None)
    if out is not None:
        x_next = out.copy_(x_next)
    if den is None:
        return x_next
    return x_next, den_out.copy_(den) if den_out is not None else den


def sampler_update(x0_hat: torch.Tensor, x_t: torch.Tensor | None, update: SamplerUpdate, seeds,
                   full_size=None, origin=(0, 0), den_dtype: torch.dtype | None = None,
                   den_channels_last: bool = False, backend: str = "auto", out: torch.Tensor | None = None,
                   den_out: torch.Tensor | None = None):
    """x_next = a·x0̂ + b·x_t + σ·z [B, C, H, W] float32, one pass; with ``den_dtype`` also the next
    denoiser input [B, C + 1, H, W] (channels_last if asked): (x_next, den_input).

    x0̂, x_t: any float dtype and strides. ``seeds``: one per image (ints or an int64 tensor [B]), or noise
    keys [B, 4] (:func:`~dpir_fast.reference.noise.noise_keys`; on the device, CUDA graphs keep them
    static); ``full_size``/``origin``: one pair or one per image. ``out`` / ``den_out``: buffers to write
    (``out`` may be x_t). Reference: :func:`~dpir_fast.reference.sampler_update_ref`.
    """
    if not _triton(x0_hat, backend, x0_hat, x_t):
        return _write(sampler_update_ref(x0_hat, x_t, update, seeds, full_size, origin, den_dtype,
                                         den_channels_last), out, den_out)
    return _kernels().affine_update(x0_hat, x_t, update.a, update.b, update.sigma, update.stream, seeds,
                                    update.den_scale, update.den_level, full_size, origin, den_dtype,
                                    den_channels_last, out, den_out)


def jump(x_ir: torch.Tensor, schedule: Schedule, tau: int, seeds, start: str = "jump", full_size=None,
         origin=(0, 0), den_dtype=None, den_channels_last=False, backend: str = "auto"):
    """x_τ [B, C, H, W] from x_IR (and the denoiser input at τ): fast :func:`~dpir_fast.reference.jump_ref`."""
    return sampler_update(x_ir, None, jump_update(schedule, tau, start), seeds, full_size, origin, den_dtype,
                          den_channels_last, backend)


def ancestral_step(x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, schedule: Schedule, seeds, full_size=None,
                   origin=(0, 0), den_dtype=None, den_channels_last=False, backend: str = "auto"):
    """x_{t−1} (and the denoiser input at t − 1): fast :func:`~dpir_fast.reference.ancestral_step_ref`."""
    return sampler_update(x0_hat, x_t, ancestral_update(schedule, t), seeds, full_size, origin, den_dtype,
                          den_channels_last, backend)


def ddim_step(x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, s: int, schedule: Schedule, seeds,
              eta: float = 0.0, full_size=None, origin=(0, 0), den_dtype=None, den_channels_last=False,
              backend: str = "auto"):
    """x_s (and the denoiser input at s): fast :func:`~dpir_fast.reference.ddim_step_ref`."""
    return sampler_update(x0_hat, x_t, ddim_update(schedule, t, s, eta), seeds, full_size, origin, den_dtype,
                          den_channels_last, backend)


@torch.no_grad()
def fusion_time_weights(net, timesteps: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """FusionNet's 3CA weights w [len(timesteps), n_feat] float32 for a whole list of steps, in one call."""
    t = torch.as_tensor(timesteps, device=net.conv_in.weight.device).reshape(-1)
    with torch.autocast(t.device.type, enabled=False):
        return net.time_weights(t, t.numel()).float()


def fuses(net, x: torch.Tensor, backend: str = "auto", inputs: Sequence[torch.Tensor | None] = ()) -> bool:
    """Whether :func:`fusion_step` runs ``net`` fused for tensors like ``x`` (and ``inputs``). Other modules
    run as themselves; a ``models.FusionNet`` the kernels cannot fuse, or one autograd needs gradients
    through, is an error under an explicit backend."""
    if _backend.resolve("triton", x.device, backend) != "triton" or not _kernels().is_fusion_net(net):
        return False
    reason = _kernels().unsupported_reason(net)
    if reason and backend != "auto":
        raise ValueError(f"backend {backend!r} cannot fuse this fusion network: {reason}")
    return reason is None and _triton(x, backend, x, *inputs, *net.parameters())


def _compute_dtype(net, device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return net.conv_in.weight.dtype


def fusion_pack(net, x: torch.Tensor, dtype: torch.dtype | None = None, backend: str = "auto"):
    """The packed weights :func:`fusion_step` reads for tensors like ``x`` (None when ``net`` runs unfused).
    A CUDA graph that captured fusion_step must hold them: an optimiser step or ``load_state_dict`` repacks
    into new tensors and drops these from the cache."""
    if not fuses(net, x, backend):
        return None
    return _kernels().packed_fusion(net, _compute_dtype(net, x.device, dtype))


def fusion_step(net, x_ir: torch.Tensor, x_den: torch.Tensor, t, x_t: torch.Tensor | None,
                update: SamplerUpdate, seeds, weights: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                full_size=None, origin=(0, 0), den_dtype=None, den_channels_last=False, backend: str = "auto",
                out: torch.Tensor | None = None, den_out: torch.Tensor | None = None):
    """x_next = a·FusionNet(x_IR, x_den, t) + b·x_t + σ·z [B, C, H, W] float32 (and the next denoiser input).

    With Triton and a ``models.FusionNet``, the whole network is fused and the update is the last conv's
    epilogue: x0̂ never reaches memory. ``weights``: the 3CA weights [1 or B, n_feat] (see
    :func:`fusion_time_weights`), else computed from t. ``dtype``: the convolutions' dtype (default: the
    autocast dtype when autocast is on, else the module's). Any other fusion module runs as itself,
    followed by :func:`sampler_update`. Reference: :func:`~dpir_fast.reference.fusion_step_ref`.
    """
    if not fuses(net, x_ir, backend, (x_den, x_t)):
        x0_hat = fusion_ref(net, x_ir, x_den, t)
        return sampler_update(x0_hat, x_t, update, seeds, full_size, origin, den_dtype, den_channels_last, backend,
                              out, den_out)
    if weights is None:
        weights = fusion_time_weights(net, t)
    return _kernels().fusion_forward(net, x_ir, x_den, weights, _compute_dtype(net, x_ir.device, dtype), seeds, x_t,
                                     update.a, update.b, update.sigma, update.stream, update.den_scale,
                                     update.den_level, full_size, origin, den_dtype, den_channels_last, out, den_out)


def fusion(net, x_ir: torch.Tensor, x_den: torch.Tensor, t, weights: torch.Tensor | None = None,
           dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """x0̂ [B, C, H, W] float32 = FusionNet(x_IR, x_den, t), fused on Triton; reference :func:`fusion_ref`."""
    if not fuses(net, x_ir, backend, (x_den,)):
        return fusion_ref(net, x_ir, x_den, t)
    return fusion_step(net, x_ir, x_den, t, None, SamplerUpdate(1.0, 0.0, 0.0, 0), [0] * x_ir.shape[0], weights,
                       dtype, backend=backend)


# MIRNet attention ops (C++/CUDA extension) --------------------------------------------------------
_EXT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _ext(feats: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], backend: str) -> bool:
    """Whether an op runs the compiled kernel: not when autograd wants gradients (the kernels are forward-only),
    not under "auto" for mixed feature dtypes (autocast) or dtypes other than float32/bfloat16/float16, else as
    ``_backend.resolve`` decides for the features' device."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*feats, *weights)):
        return False
    if _backend.resolve("ext", feats[0].device, backend) != "ext":
        return False
    plain = feats[0].dtype in _EXT_DTYPES and all(f.dtype == feats[0].dtype for f in feats)
    return plain or _backend.check_choice(backend) != "auto"


def dau_tail(r: torch.Tensor, x: torch.Tensor, w_sa: torch.Tensor, w_ca_down: torch.Tensor, w_ca_up: torch.Tensor,
             w_out: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """MIRNet DAU's attention tail x + conv1x1(cat[SA(r), CA(r)]) [B, C, H, W], fused in the extension as
    x + s_sp ⊙ (W₁ r) + (W₂·diag(s_ch)) r (no SA, CA or concatenation tensor).

    r, x [B, C, H, W] (float32/bfloat16/float16, NCHW or channels_last); w_sa [1, 2, 5, 5];
    w_ca_down [C/8, C, 1, 1]; w_ca_up [C, C/8, 1, 1]; w_out [C, 2C, 1, 1]. Reference :func:`dau_tail_ref`.
    NaN propagates on every device, as in the reference: the max-pool and the ReLU keep it (torch.amax, relu), so
    a NaN in r makes its whole image NaN (through the channel mean), a NaN in x only its own output.
    """
    if _ext((r, x), (w_sa, w_ca_down, w_ca_up, w_out), backend):
        return torch.ops.dpir_fast.dau_tail(r, x, w_sa, w_ca_down, w_ca_up, w_out)
    return dau_tail_ref(r, x, w_sa, w_ca_down, w_ca_up, w_out)


def skff(feats: Sequence[torch.Tensor], w_down: torch.Tensor, prelu: torch.Tensor, w_up: Sequence[torch.Tensor],
         backend: str = "auto") -> torch.Tensor:
    """MIRNet's selective kernel feature fusion Σ_k softmax_k(W_up[k] PReLU(W_down mean_HW Σ feats)) ⊙ feats[k]
    [B, C, H, W], fused in the extension as two passes over the inputs (3 streams; others use the reference).

    feats: 3 tensors [B, C, H, W]; w_down [d, C, 1, 1]; prelu [1] or [d]; w_up: 3 weights [C, d, 1, 1].
    Reference :func:`skff_ref`. NaN propagates on every device, as in the reference: the softmax's max keeps it,
    so a NaN in any stream makes its whole image NaN (through the pooled mean).
    """
    feats, w_up = list(feats), list(w_up)
    if len(feats) == 3 and len(w_up) == 3 and _ext(feats, (w_down, prelu, *w_up), backend):
        return torch.ops.dpir_fast.skff(*feats, w_down, prelu, *w_up)
    return skff_ref(feats, w_down, prelu, w_up)
