"""benchmarks/roofline.py: the model's arithmetic on tiny cases counted by hand, the script's table, and the
microbenchmarks' "of floor" column (CPU only: the floor is set against a stubbed measurement)."""
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from dpir_fast.models import FusionNet

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def roofline(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import roofline
    return roofline


def toy(roofline):
    """Round numbers: 1000 B/s, tensor cores 1000 FLOP/s (TF32 500), CUDA cores 100 FLOP/s."""
    return roofline.Device("toy", 1e3, 1e3, 1e3, 500.0, 100.0, "test")


def test_dau_tail_by_hand(roofline):
    # B=1, C=8, 4×4, bf16, one tile: r = x = out = 128 elements = 256 B; pooled [1,2,16] fp32 128 B;
    # partials [1,1,8] 32 B; s_sp 64 B; w_sa 200 B; w_ca_down/up 32 B each, w_out [8,16] fp32 512 B; W' [1,8,16] 256 B
    op = roofline.dau_tail(1, 8, 4, 4, "bf16", tiles=1)
    assert [k.bytes for k in op.launches] == [256 + 128 + 32, 128 + 200 + 64, 32 + 64 + 512 + 256,
                                              3 * 256 + 64 + 256]
    assert op.bytes == 2760
    assert op.flops == 2 * 16 * 8 * 16 + 2 * 2 * 25 * 16 + 3 * 128   # GEMM 4096 + conv 1600 + epilogue 384
    dev = toy(roofline)
    # launches: 0.416 s (memory), 1600/100 = 16 s (conv), 0.864 s, max(1.088, 4096/1000, 384/100) = 4.096 s
    assert op.floor_s(dev) == pytest.approx(0.416 + 16 + 0.864 + 4.096)
    assert op.bound(dev) == "compute (94% compute-bound)"
    fp32 = roofline.dau_tail(1, 8, 4, 4, "fp32", tiles=1)
    assert fp32.bytes == (512 + 128 + 32) + 392 + (608 + 512) + (3 * 512 + 64 + 512)
    assert fp32.launches[-1].times(dev)[1] == pytest.approx(3 * 4096 / 500)   # 3×TF32 against the TF32 peak


def test_dau_tail_reference_by_hand(roofline):
    op = roofline.dau_tail_ref(1, 8, 4, 4, "bf16")
    n = 128
    # big terms: 11 reads and 6 writes of [B, C, H, W]; the rest: the planes, per-image vectors and weights
    small = 16 + 16 + 64 + 98 + 32 + 16 + 8 + 17 + 2 + 17 + 16 + 8 + 128
    assert op.bytes == 2 * (17 * n + small) == 5228
    assert roofline.dau_tail(4, 64, 128, 128).bytes * 3.9 < roofline.dau_tail_ref(4, 64, 128, 128).bytes


def test_skff_and_sampler_by_hand(roofline):
    op = roofline.skff(1, 8, 4, 4, "bf16", tiles=1)
    # pass 1: 3 inputs + partials; attention: partials + weights (4·d·C + 1 fp32, d = 4) + a [1,3,8]; pass 2
    assert [k.bytes for k in op.launches] == [3 * 256 + 32, 32 + 129 * 4 + 96, 3 * 256 + 96 + 256]
    assert op.flops == 8 * 128
    step = roofline.sampler_update("ancestral_step", 1, 3, 4, 4, "bf16")
    # x0̂ 48 bf16, x_t 48 fp32, keys 32 B; x_next 48 fp32, den [1,4,4,4] bf16
    assert step.bytes == 96 + 192 + 32 + 192 + 128 and step.flops == 7 * 48
    jump = roofline.sampler_update("jump", 1, 3, 4, 4, "bf16", x_t=False)
    assert jump.bytes == 96 + 32 + 192 + 128 and jump.flops == 5 * 48


def test_fusion_net_by_hand(roofline):
    net = FusionNet(n_feat=8, growth=4, n_decoder_blocks=1)
    rows = roofline.fusion_net(net, 1, 4, 4, "bf16", update=True)
    assert [r.kernel for r in rows] == ["conv_in", *(f"enc.conv{i}" for i in range(4)), "enc.conv4 + 3CA mix",
                                        *(f"dec0.conv{i}" for i in range(4)), "dec0.conv4 + residual",
                                        "conv_out + update"]
    by = {r.kernel: r for r in rows}
    # conv_in 3→8 on 16 pixels per launch, weights 27·8 bf16 + 8 fp32 = 464 B: x_IR fp32 / x_den bf16 in, 8 ch out
    assert [k.bytes for k in by["conv_in"].launches] == [192 + 256 + 464, 96 + 256 + 464]
    assert by["enc.conv0"].bytes == 32 * 8 * 2 + 32 * 4 * 2 + 72 * 4 * 2 + 16   # 2B images 8 → 4 channels
    assert by["enc.conv0"].flops == 2 * 32 * 4 * 72
    # the mix conv computes 2B images (24 → 8 channels), writes B
    assert by["enc.conv4 + 3CA mix"].bytes == 32 * 24 * 2 + 16 * 8 * 2 + 216 * 8 * 2 + 32
    assert by["enc.conv4 + 3CA mix"].flops == 2 * 32 * 8 * 216
    assert by["dec0.conv4 + residual"].bytes == 16 * 24 * 2 + 16 * 8 * 2 + 3488
    # conv_out 8 → 3: decoder buffer, x_IR and x_t fp32 in; x_next fp32 and den [1,4,4,4] bf16 out; weights 444 B
    assert by["conv_out + update"].bytes == 256 + 192 + 192 + 192 + 128 + 444
    assert roofline.fusion_net(net, 1, 4, 4, "bf16", update=False)[-1].bytes == 256 + 192 + 192 + 444
    macs = lambda convs: sum(9 * c.in_channels * c.out_channels for c in convs)   # noqa: E731
    per_pixel = 2 * macs([net.conv_in, *net.encoder.convs]) + macs([*net.decoder[0].convs, net.conv_out])
    assert sum(r.flops for r in rows) == 2 * 16 * per_pixel


def test_devices(roofline):
    h200 = roofline.DEVICES["h200"]
    assert (h200.bandwidth, h200.bf16, h200.tf32, h200.fp32) == (4.8e12, 989e12, 494e12, 67e12)
    assert roofline.DEVICES["h100"].bandwidth == 3.35e12
    assert roofline.cuda_device("NVIDIA H200") is h200
    assert roofline.cuda_device("NVIDIA H100 80GB HBM3") is roofline.DEVICES["h100"]
    assert roofline.cuda_device("NVIDIA H100 PCIe") is None and roofline.cuda_device("NVIDIA A100-SXM4-80GB") is None
    assert roofline.of_floor(roofline.dau_tail(1, 8, 4, 4), "cpu", 1.0) is None


def test_script_writes_table(tmp_path):
    out = tmp_path / "roofline.md"
    proc = subprocess.run([sys.executable, str(BENCH / "roofline.py"), "--device", "h100", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert text in proc.stdout + "\n"
    assert "not a measurement" in text and "3.35 TB/s" in text
    assert "| kernel | shape | MB moved | GFLOP | FLOP/B | floor µs | bound |" in text
    for row in ("| dau_tail | 4x64x128x128 bf16 |", "| dau_tail reference (eager) |", "| skff |", "| ddim_step |",
                "| enc.conv4 + 3CA mix |", "| conv_out + update |", "| FusionNet step"):
        assert row in text
    assert "- `fusion_net`: conv = GEMM" in text


def test_bench_column(roofline, monkeypatch, capsys):
    """bench_dau.run (bench_skff's too) adds "of floor" when roofline.of_floor has a device for the measurement."""
    import bench_dau
    op = roofline.dau_tail(1, 8, 4, 4)
    monkeypatch.setattr(roofline, "of_floor", lambda model, device, ms: 0.5 if model is op else None)
    args = Namespace(device="cpu", repeats=2, no_history=True)
    rows = bench_dau.run("t", [("case", lambda: None, lambda: None, 8, op)], args)
    assert rows[0]["of floor"] == "50%" and "of floor" in capsys.readouterr().out
    assert "of floor" not in bench_dau.run("t", [("case", lambda: None, lambda: None, 8)], args)[0]
