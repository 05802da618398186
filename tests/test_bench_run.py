"""benchmarks/run.py: a --quick run on the CPU (the JSON's structure; its FLOP counts equal FlopCounterMode run here
on the same networks; total = x·NFE_s + y) and its usage errors (exit code 2, through ``dpir-fast bench``)."""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dpir_fast import cli
from dpir_fast._backend import default_precision
from dpir_fast.models import FusionNet, fftformer_gopro, mirnet_s, swinir_classical_sr4

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
COMPONENTS = {"ir net", "denoiser", "fusion", "sampler step", "dau_tail", "skff"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    """The JSON of one ``run.py --quick`` on the CPU: deblur at 32×32, reference and fast. One thread: OpenMP's
    barriers make a 2-thread run 10-50× slower on a machine busy with other work (a parallel test run)."""
    path = tmp_path_factory.mktemp("bench") / "run.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # the fast row's own CPU path
    argv = ["--quick", "--device", "cpu", "--task", "deblur", "--threads", "1", "--json", str(path), "--no-history"]
    proc = subprocess.run([sys.executable, str(RUN), *argv], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TFLOP/image = x·NFE_s + y" in proc.stdout and "[1/" in proc.stderr   # table and progress
    return json.loads(path.read_text())


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_quick_json_structure(quick):
    assert {"machine", "settings", "peak", "memory_kind", "notes", "tasks"} <= set(quick)
    assert quick["settings"]["quick"] and quick["settings"]["device"] == "cpu" and quick["peak"]["tflops"] > 0
    task = quick["tasks"]["deblur"]
    assert task["size"] == [32, 32] and task["input_shape"] == [1, 3, 32, 32]
    assert task["modules"]["ir"] == "fftformer_gopro()" and task["modules"]["denoiser"] == "mirnet_s()"
    assert set(task["backends"]) == {"reference", "fast"}
    for b in task["backends"].values():
        assert "error" not in b, b
        for row in ("jump", "forward", "chain"):
            r = b[row]
            assert r["ms_per_image"] > 0 and r["images_per_s"] == pytest.approx(1e3 / r["ms_per_image"])
            assert r["tflops"] == pytest.approx(r["tflop_per_image"] / r["ms_per_image"] * 1e3)
            assert r["measured"] == (row != "chain")
        assert b["jump"]["nfe"] == 6 and b["chain"]["nfe"] == 1001
        assert set(b["components"]) == COMPONENTS and all(b["components"][c]["median_ms"] > 0 for c in COMPONENTS)
        assert b["nvml"]["power_w"] is None and b["nvml"]["note"] and b["peak_mem_mib"] is not None
    fast, ref = task["backends"]["fast"], task["backends"]["reference"]
    # the baseline is fp32 NCHW; the fast row runs the pipeline's CPU default (bf16 where the CPU has it)
    assert (ref["dtype"], ref["channels_last"]) == ("fp32", False)
    assert (fast["dtype"], fast["channels_last"]) == (default_precision("cpu")[0], True)
    assert quick["settings"]["dtype"] == f"reference fp32 NCHW, fast {fast['dtype']}"
    assert fast["ran_as"] == "fast" or (fast["ran_as"] == "auto" and "cannot run here" in fast["note"])


def test_quick_flops_equal_flop_counter(quick, one_thread):
    task = quick["tasks"]["deblur"]
    (width, height), c = task["size"], task["flops"]
    ir, den, fusion = fftformer_gopro().eval(), mirnet_s(backend="reference").eval(), FusionNet().eval()
    x_ir = torch.rand(1, 3, height, width)
    assert c["ir"] == _flops(lambda: ir(x_ir)) > 0
    assert c["denoiser"] == _flops(lambda: den(torch.rand(1, 4, height, width))) > 0
    assert c["fusion"] == _flops(lambda: fusion(x_ir, x_ir, task["tau"])) > 0
    assert (c["x"], c["y"], c["nfe"], c["nfe_sampler"]) == (c["denoiser"] + c["fusion"], c["ir"], 6, 5)
    assert c["total"] == c["x"] * c["nfe_sampler"] + c["y"] and c["chain_total"] == c["x"] * 1000 + c["y"]
    for b in task["backends"].values():
        assert b["jump"]["tflop_per_image"] == c["total"] / 1e12
        assert b["chain"]["tflop_per_image"] == c["chain_total"] / 1e12


def test_count_flops_leaves_the_networks_usable(one_thread, monkeypatch):
    """Counting runs on fake tensors through copies: SwinIR, which caches its attention mask for the running size,
    still runs on real tensors afterwards, and its count equals a real run's under the same counter (with the
    added formula for the CPU's SDPA kernel, which plain FlopCounterMode counts as 0)."""
    spec = importlib.util.spec_from_file_location("bench_workload", RUN.parent / "_workload.py")
    workload = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, workload)   # its dataclass looks its module up
    spec.loader.exec_module(workload)
    modules = (swinir_classical_sr4().eval(), mirnet_s().eval(), FusionNet().eval())
    counts = workload.count_flops("sr4x", modules, 32, 32, 250)
    assert modules[1].backend == "auto"
    with torch.no_grad(), workload.flop_counter() as counter:
        out = modules[0](torch.rand(1, 3, 8, 8))
    assert counts["ir"] == counter.get_total_flops() > _flops(lambda: modules[0](torch.rand(1, 3, 8, 8)))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_an_interrupted_backend_keeps_what_was_measured(monkeypatch):
    """Ctrl-C, or SIGTERM from a time limit (scripts/gpu_check.sh), during a backend: that backend is marked
    interrupted, the next ones do not run, and the task's results so far are returned for the report."""
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)

    def measure_backend(task, b, *args):
        if b == "fast":
            raise KeyboardInterrupt
        return {"ran_as": b}

    monkeypatch.setattr(run, "build_modules", lambda task: (torch.nn.Identity(),) * 3)
    monkeypatch.setattr(run, "cost_split", lambda *args: {"x": 0, "y": 0})
    monkeypatch.setattr(run, "make_input", lambda *args: torch.zeros(1, 3, 8, 8))
    monkeypatch.setattr(run, "make_backend", lambda name, *args: name)
    monkeypatch.setattr(run, "measure_backend", measure_backend)
    args = argparse.Namespace(sizes_by_task={"deblur": (8, 8)}, device=torch.device("cpu"), batch=1,
                              precisions=dict.fromkeys(["reference", "fast", "compile"], ("fp32", True)),
                              backends=["reference", "fast", "compile"])
    result = run.measure_task("deblur", args, 1.0, cli.Progress(3, enabled=False))
    assert result["backends"] == {"reference": {"ran_as": "reference"}, "fast": {"error": "interrupted"}}
    assert result["interrupted"]


@pytest.mark.parametrize("argv, message", [
    (["--task", "denoise"], "argument --task: invalid task denoise"),
    (["--size", "1280by720"], "argument --size: '1280by720' is not WIDTHxHEIGHT"),
    (["--size", "0x720"], "is not WIDTHxHEIGHT with positive sides"),
    (["--task", "sr4x", "--size", "1282x720"], "sr4x needs multiples of 4"),
    (["--task", "burst", "--sizes", "64x64,100x100"], "burst needs multiples of 8"),
    (["--device", "gpu"], "argument --device: 'gpu': use auto, cpu, cuda or cuda:N"),
    (["--backends", "reference,turbo"], "invalid backend turbo"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: dpir-fast bench" in err


def test_break_even_counts_the_images_that_pay_for_compilation(monkeypatch):
    monkeypatch.syspath_prepend(str(RUN.parent))   # _report imports its sibling _common
    report = importlib.import_module("_report")
    eager = {"first_call_s": 2.0, "jump": {"ms_per_image": 1000.0}}
    compiled = {"first_call_s": 61.5, "jump": {"ms_per_image": 500.0}}   # 60 s more, then 0.5 s per image less
    assert report.break_even(compiled, eager).endswith("pays off after 120 images")
    assert report.break_even({"first_call_s": 30.0, "jump": {"ms_per_image": 1200.0}}, eager).endswith("never pays off")
