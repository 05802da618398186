"""scripts/gpu_check.sh: its dry run, its steps' records (with a stand-in Python), and gpu_summary.py's summary."""
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" / "gpu_summary.py")
gpu_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_summary)

STAGES = ["0 build", "1 tests", "2 sanitizer", "3 microbench", "4 run.py"]


def gpu_check(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    run = gpu_check("--dry-run", str(out))
    assert run.returncode == 0, run.stderr
    for text in [*STAGES, "setup.py build_ext --inplace", "MAX_JOBS=", "-m dpir_fast.cli info",
                 "-m pytest -v -rfE -m cuda tests/", "--tool memcheck", "--tool racecheck",
                 *(f"benchmarks/bench_{b}.py" for b in ("dau", "skff", "sampler", "fusion", "engine")),
                 "--task deblur --size 1280x720 --backends reference,fast,compile --dtype bf16",
                 "--task sr4x --size 512x512", f"--json {out}/run_sr4x_cuda.json"]:
        assert text in run.stdout, text
    assert not out.exists()


def test_usage_errors_exit_2():
    assert gpu_check().returncode == 2
    assert gpu_check("a", "b").returncode == 2
    assert gpu_check("--fast", "out").returncode == 2


# A stand-in for Python on a GPU machine: a GPU of compute capability 9.0, a build record, failing tests.
FAKE_PYTHON = """#!/usr/bin/env bash
case "$1" in
    -c) echo 9.0 ;;
    scripts/gpu_summary.py) exec {python} "$@" ;;
    -m) [[ $2 == pytest ]] || {{ echo "_C built for torch 2.11.0, CUDA 13.0"; exit 0; }}
        echo "FAILED tests/test_skff.py::test_x - AssertionError"; echo "== 1 failed, 5 passed in 1.0s =="; exit 1 ;;
    *) echo "ran $*" ;;
esac
"""


def test_steps_are_recorded_and_summarised_whatever_fails(tmp_path):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    out = tmp_path / "out"
    run = gpu_check(str(out), PYTHON=str(python))
    assert run.returncode == 1, run.stdout + run.stderr   # the tests failed; every other step still ran
    stages = gpu_summary.read_stages(out)
    assert [s["stage"] for s in stages] == ["0 build"] * 2 + ["1 tests"] + ["2 sanitizer"] * 2 + \
        ["3 microbench"] * 5 + ["4 run.py"] * 2
    results = {s["step"]: s["result"] for s in stages}
    assert results["_C arch 9.0"] == results["build record"] == results["bench_engine"] == "passed"
    assert results["pytest -m cuda"] == "failed"
    assert {results["memcheck"], results["racecheck"]} <= {"skipped", "failed"}   # skipped without the tool
    assert "TORCH_CUDA_ARCH_LIST=9.0" in stages[0]["command"]
    assert len(list(out.iterdir())) <= 8 and all(p.is_file() for p in out.iterdir())
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check: ") and "_C built for torch 2.11.0, CUDA 13.0" in summary
    assert "FAILED tests/test_skff.py::test_x - AssertionError" in summary and "`tests.log:1`" in summary
    assert re.search(r"\| 1 tests \| pytest -m cuda \| failed \| \d+ / 80 \| exit status 1; 1 failed, 5 passed in 1.0s "
                     r"\| tests.log:1 \|", summary)


HISTORY = [  # (benchmark, case, backend, median_ms, metric, value), as the benchmarks append them
    ("bench_dau", "4x64x128x128 bfloat16", "reference", 1.0, "", ""),
    ("bench_dau", "4x64x128x128 bfloat16", "ext", 0.5, "speedup", 2.0),
    ("bench_dau", "4x64x128x128 bfloat16", "ext", 0.5, "GB/s", 2000),
    ("bench_dau", "4x128x64x64 bfloat16", "reference", 0.9, "", ""),
    ("bench_dau", "4x128x64x64 bfloat16", "ext", 0.3, "speedup", 3.0),
    ("bench_dau", "4x128x64x64 bfloat16", "ext", 0.3, "GB/s", 3000),
    ("bench_dau", "device-to-device copy 256 MiB", "torch", "", "GB/s", 4000),
    ("bench_fusion", "fusion 8x3x256x256 bf16", "reference", 6.0, "TFLOP/s", 100),
    ("bench_fusion", "fusion 8x3x256x256 bf16", "triton", 4.0, "TFLOP/s", 150),
    ("bench_engine", "1x3x720x1280 bf16 tau=5", "fast-eager", 30.0, "ms_per_image", 30.0),
    ("bench_engine", "1x3x720x1280 bf16 tau=5", "fast-graph", 24.0, "ms_per_image", 24.0),
    ("run", "deblur 1280x720 b1 bf16 16thr jump", "fast", 200.0, "TFLOP/s", 230),
]


def test_summary_of_fake_records(tmp_path):
    history = tmp_path / "history.csv"
    with history.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["benchmark", "case", "backend", "median_ms", "metric", "value", "device", "torch", "cuda",
                         "triton", "commit"])
        writer.writerow(["bench_dau", "old row", "ext", 9.0, "GB/s", 1, "older GPU", "", "", "", ""])
        writer.writerows([*row, "NVIDIA H200", "2.11.0+cu130", "13.0", "3.5.0", "abc1234"] for row in HISTORY)
    out = tmp_path / "out"
    out.mkdir()
    steps = [("3 microbench", "bench_dau", "passed", "9", "12", "bench.log:1", "", "python benchmarks/bench_dau.py"),
             ("4 run.py", "deblur 1280x720", "failed", "70", "70", "bench.log:3", "timed out after 70 s", "python r")]
    (out / "stages.tsv").write_text("".join("\t".join(s) + "\n" for s in steps))
    (out / "bench.log").write_text("#### gpu_check 3 microbench / bench_dau\ntable\n"
                                   "#### gpu_check 4 run.py / deblur\nTraceback (most recent call last):\nboom\n")
    backends = {"reference": {"jump": {"ms_per_image": 300.0}}, "fast": {"jump": {"ms_per_image": 150.0}},
                "compile": {"error": "interrupted"}}
    (out / "run_deblur_cuda.json").write_text(json.dumps(
        {"tasks": {"deblur": {"size": [1280, 720], "flops": {"nfe": 6}, "backends": backends}}}))

    assert gpu_summary.main([str(out), "--history", str(history), "--since", "2"]) == 0
    assert len((out / "history.csv").read_text().splitlines()) == 1 + len(HISTORY)   # the header and this run's
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check: 1 passed, 1 failed, 0 skipped in 79 s")
    assert "NVIDIA H200, torch 2.11.0+cu130 (CUDA 13.0), Triton 3.5.0, commit abc1234" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| bench_")]
    assert rows[0] == ("| bench_dau | DAU tail, C++/CUDA op vs eager module | 2 | 2.00×–3.00× | 2000–3000 | 50 %–75 % "
                       "| 4000 |")
    assert rows[1].startswith("| bench_fusion | fused FusionNet (Triton) vs the module in bf16 channels_last, eager "
                              "| 1 | 1.50× | - | - | - |")
    assert rows[2].startswith("| bench_engine | τ-step loop as one CUDA graph vs eager | 1 | 1.25× |")
    assert "| deblur | 1280x720 | 6 | 300.0 | 150.0 | interrupted | 2.00× |" in summary
    assert "**4 run.py / deblur 1280x720**: timed out after 70 s; log `bench.log:3`" in summary
    assert "Traceback (most recent call last):" in summary and "old row" not in summary


def test_summary_with_nothing_recorded(tmp_path):
    assert gpu_summary.main([str(tmp_path)]) == 0
    assert "# GPU check: 0 passed, 0 failed, 0 skipped" in (tmp_path / "summary.md").read_text()
