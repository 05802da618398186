"""MIRNet-S forward with the fused DAU tails and SKFFs (dpir_fast._C) vs the same network on the reference path.

    python benchmarks/bench_mirnet.py [--device cpu|cuda] [--repeats N] [--no-history]

CPU: 1×4×128×128 float32. CUDA: 4×4×256×256 in float32 and bfloat16 (channels_last for bfloat16).
"""
from __future__ import annotations

import torch

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
    return cases


if __name__ == "__main__":
    args = parse(__doc__, repeats=3)
    run("bench_mirnet", mirnet_cases(torch.device(args.device)), args)
