"""PSNR of the shipped pipelines in fp32 and in bf16 on the demo's val split (the CPU precision policy's quality check).

    python scripts/precision_check.py --work runs/demo     # after scripts/train_demo.py --stage data

For each shipped pipeline, the IR net and DP-IR on the val centre crops (degraded as in scripts/train_demo.py) in
float32 and under bf16 autocast (what ``dtype=None`` picks on CPUs with native bf16); prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import train_demo  # noqa: E402

from dpir_fast import DPIR  # noqa: E402
from dpir_fast.metrics import psnr  # noqa: E402
from dpir_fast.pretrained import PRETRAINED  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "demo")
    args = parser.parse_args()
    _, x0 = train_demo._crops(args.work, "val")
    print("| pipeline | part | fp32 PSNR | bf16 PSNR | bf16 − fp32 | fp32 s | bf16 s |")
    print("|" + " --- |" * 7)
    for name in sorted(PRETRAINED):
        demo = name.removeprefix("demo-")
        y = train_demo._degraded(demo, x0)
        scores = {}
        for dtype in ("fp32", "bf16"):
            pipe = DPIR.from_pretrained(name).configure(dtype=dtype)
            for part, run in (("IR net", pipe.restore_ir), ("DP-IR", lambda y: pipe(y, seed=0))):
                started = time.perf_counter()
                out = run(y).clamp(0, 1)
                scores[part, dtype] = (float(psnr(out, x0).mean()), time.perf_counter() - started)
        for part in ("IR net", "DP-IR"):
            (p32, t32), (p16, t16) = scores[part, "fp32"], scores[part, "bf16"]
            print(f"| {name} | {part} | {p32:.3f} | {p16:.3f} | {p16 - p32:+.3f} | {t32:.1f} | {t16:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
