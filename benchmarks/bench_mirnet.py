"""MIRNet-S forward with the fused DAU tails and SKFFs (dpir_fast._C) vs the same network on the reference path.

    python benchmarks/bench_mirnet.py [--device cpu|cuda] [--repeats N] [--no-history]

CPU: 1×4×128×128, float32 NCHW both sides; then the pipeline's CPU default (bf16 autocast where the CPU has native
bf16, else float32; channels_last; the extension) against the float32 NCHW reference, the network as its authors'
code runs it. CUDA: 4×4×256×256 in float32 and bfloat16 (channels_last for bfloat16).
"""
from __future__ import annotations

import torch

from _workload import autocast, default_dtype
from bench_dau import parse, run
from dpir_fast.models import mirnet_s


def mirnet_cases(device: torch.device) -> list:
    if device.type == "cpu":
        settings = [((1, 4, 128, 128), torch.float32, torch.contiguous_format)]
    else:
        settings = [((4, 4, 256, 256), torch.float32, torch.contiguous_format),
                    ((4, 4, 256, 256), torch.bfloat16, torch.channels_last)]
    cases = []
    for shape, dtype, fmt in settings:
        torch.manual_seed(0)
        model = mirnet_s().to(device, dtype, memory_format=fmt).eval()
        x = torch.rand(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)

        def forward(backend, model=model, x=x):
            model.backend = backend
            return model(x)

        label = "x".join(map(str, shape)) + f" {str(dtype)[6:]}" + (" channels_last" if fmt == torch.channels_last
                                                                      else "")
        cases.append((label, lambda f=forward: f("reference"), lambda f=forward: f("ext"), 0))
    if device.type == "cpu":
        cases.append(cpu_default_case(device))
    return cases


def cpu_default_case(device: torch.device) -> tuple:
    """(label, float32 NCHW reference, the CPU default with the extension, 0) at 1×4×128×128, same weights."""
    torch.manual_seed(0)
    reference = mirnet_s().to(device).eval()
    reference.backend = "reference"
    default = mirnet_s().to(device, memory_format=torch.channels_last).eval()
    default.load_state_dict(reference.state_dict())
    default.backend = "ext"
    x = torch.rand(1, 4, 128, 128, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    dtype = default_dtype(device)

    def fast():
        with autocast(device, dtype):
            return default(x_cl)
    return f"1x4x128x128 default ({str(dtype)[6:]} channels_last) vs float32 NCHW", lambda: reference(x), fast, 0


if __name__ == "__main__":
    args = parse(__doc__, repeats=3)
    run("bench_mirnet", mirnet_cases(torch.device(args.device)), args)
