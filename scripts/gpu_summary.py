"""summary.md of a scripts/gpu_check.sh run, from what the run left in its OUTDIR.

    python scripts/gpu_summary.py OUTDIR [--history benchmarks/results/history.csv --since N]

Reads OUTDIR/stages.tsv (a line per step: stage, step, result, seconds, budget, log:line, note, command),
OUTDIR/history.csv (with --history, first rewritten as the header and the rows after line N of that file) and
OUTDIR/run_*.json (benchmarks/run.py), and writes OUTDIR/summary.md: each step's result, the build record, the
headline ratios, and for each failed step where its log is and the lines that say why. Standard library only: it
runs whatever failed before it.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

FIELDS = ["stage", "step", "result", "seconds", "budget", "log", "note", "command"]
HEADER = "#### gpu_check "   # gpu_check.sh's line opening each step's section of a log
BASELINES = ("reference", "fast-eager")   # history.csv backends the others are compared with
WHAT = {"bench_dau": "DAU tail, C++/CUDA op vs eager module",
        "bench_skff": "SKFF, C++/CUDA op vs eager module",
        "bench_sampler": "jump / ancestral / DDIM updates, Triton vs reference",
        "bench_fusion": "fused FusionNet (Triton) vs the module in bf16 channels_last, eager",
        "bench_engine": "τ-step loop as one CUDA graph vs eager"}
REASON = re.compile(r"^(FAILED|ERROR)\b|ERROR SUMMARY|Error|error:|Traceback")
TALLY = re.compile(r"(\d+ (passed|failed|errors?|skipped|deselected)\b)|ERROR SUMMARY")


def read_stages(out: Path) -> list[dict]:
    path = out / "stages.tsv"
    if not path.is_file():
        return []
    return [dict(zip(FIELDS, line.split("\t"))) for line in path.read_text().splitlines() if line.strip()]


def section(out: Path, where: str) -> list[str]:
    """The lines of the log section whose header is at ``where`` ("file:line", 1-based), up to the next header."""
    name, _, line = where.rpartition(":")
    try:
        lines = (out / name).read_text(errors="replace").splitlines()[int(line):]
    except (OSError, ValueError):
        return []
    end = next((i for i, text in enumerate(lines) if text.startswith(HEADER)), len(lines))
    return lines[:end]


def tally(lines: list[str]) -> str:
    """pytest's closing counts and compute-sanitizer's error summary, where the section has them."""
    found = {}
    for text in lines:
        if match := TALLY.search(text):
            found[match.group(1) is None] = text.strip("= ")
    return "; ".join(found.values())


def copy_history(out: Path, history: Path, since: int) -> None:
    """OUTDIR/history.csv: the header and the rows this run appended to ``history`` (after its line ``since``)."""
    if not history.is_file():
        return
    lines = history.read_text().splitlines(keepends=True)
    (out / "history.csv").write_text("".join(lines[:1] + [r for r in lines[max(since, 1):] if r != lines[0]]))


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def bench_rows(out: Path) -> list[dict]:
    """Per microbenchmark: the speed-up of each case over its baseline and, where counted, the achieved GB/s and
    their share of the copy bandwidth measured in the same benchmark."""
    path = out / "history.csv"
    if not path.is_file():
        return []
    cases: dict[str, dict[str, list[dict]]] = {}
    for row in csv.DictReader(path.open()):
        timed = _float(row["median_ms"]) is not None or row["backend"] == "torch"   # "torch": the copy row
        if row["benchmark"] != "run" and timed:
            cases.setdefault(row["benchmark"], {}).setdefault(row["case"], []).append(row)
    table = []
    for bench, by_case in cases.items():
        copy = next((_float(r["value"]) for rows in by_case.values() for r in rows if r["backend"] == "torch"), None)
        speedups, gbs = [], []
        for rows in by_case.values():
            base = next((r for r in rows if r["backend"] in BASELINES), None)
            fast = [r for r in rows if r["backend"] not in (*BASELINES, "torch")]
            if base and fast:
                speedups.append(float(base["median_ms"]) / float(fast[0]["median_ms"]))
            gbs += [float(r["value"]) for r in fast if r["metric"] == "GB/s"]
        table.append({"benchmark": bench, "what": WHAT.get(bench, ""), "cases": len(speedups),
                      "speed-up": _span(speedups, "{:.2f}×"), "GB/s": _span(gbs, "{:.0f}"),
                      "of copy": _span([100 * g / copy for g in gbs], "{:.0f} %") if copy else "-",
                      "copy GB/s": f"{copy:.0f}" if copy else "-"})
    return table


def run_rows(out: Path) -> list[dict]:
    """Per task of each run_*.json: ms/image of the jump row per backend and the fast backend's ratios."""
    table = []
    for path in sorted(out.glob("run_*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            table.append({"task": path.name, "size": f"unreadable: {err}"})
            continue
        for task, res in result["tasks"].items():
            row = {"task": task, "size": "x".join(map(str, res["size"])), "NFE": res["flops"]["nfe"]}
            ms = {}
            for name, b in res["backends"].items():
                if "error" in b:
                    row[f"{name} ms/img"] = "failed" if b["error"] != "interrupted" else "interrupted"
                else:
                    ms[name] = b["jump"]["ms_per_image"]
                    row[f"{name} ms/img"] = f"{ms[name]:.1f}"
            for base in ("reference", "compile"):
                if "fast" in ms and base in ms:
                    row[f"fast vs {base}"] = f"{ms[base] / ms['fast']:.2f}×"
            table.append(row)
    return table


def md_table(rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]


def machine(out: Path) -> str:
    """Device, versions and commit of the run, from its first history row (the benchmarks' machine record)."""
    try:
        row = next(csv.DictReader((out / "history.csv").open()))
    except (OSError, StopIteration):
        return "machine: see the build record"
    return f"{row['device']}, torch {row['torch']} (CUDA {row['cuda']}), Triton {row['triton']}, commit {row['commit']}"


def summary(out: Path) -> str:
    stages = read_stages(out)
    counts = {k: sum(s["result"] == k for s in stages) for k in ("passed", "failed", "skipped")}
    seconds = sum(int(s["seconds"] or 0) for s in stages)
    lines = [f"# GPU check: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
             f"in {seconds} s", "", machine(out), ""]
    rows = [{"stage": s["stage"], "step": s["step"], "result": s["result"],
             "s / budget": f"{s['seconds'] or '-'} / {s['budget']}",
             "detail": "; ".join(filter(None, [s["note"], tally(section(out, s["log"]))])), "log": s["log"]}
            for s in stages]
    lines += md_table(rows) if rows else ["(no step has run)"]
    record = next((section(out, s["log"]) for s in stages if s["step"] == "build record"), [])
    if record:
        lines += ["", "## Build record", "", "```", *record, "```"]
    bench = bench_rows(out)
    if bench:
        lines += ["", "## Microbenchmarks (history.csv)", "", *md_table(bench)]
    runs = run_rows(out)
    if runs:
        lines += ["", "## End to end: benchmarks/run.py, jump row (run_*.json)", "", *md_table(runs)]
    failed = [s for s in stages if s["result"] == "failed"]
    if failed:
        lines += ["", "## Failed", ""]
        for s in failed:
            text = section(out, s["log"])
            why = [t for t in text if REASON.search(t)][:10] or [t for t in text if t.strip()][-5:] or ["(no output)"]
            lines += [f"- **{s['stage']} / {s['step']}**: {s['note'] or 'failed'}; log `{s['log']}`",
                      f"  `{s['command']}`", "", "  ```", *(f"  {t}" for t in why), "  ```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--history", type=Path, help="history.csv whose rows after line --since this run appended")
    p.add_argument("--since", type=int, default=0, help="lines --history had before the run")
    args = p.parse_args(argv)
    if args.history:
        copy_history(args.outdir, args.history, args.since)
    (args.outdir / "summary.md").write_text(summary(args.outdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
