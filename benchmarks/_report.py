"""run.py's output: the tables on stdout, the history.csv rows and the ms/image-against-size plot, all from the
result dictionary that is also written as JSON."""
from __future__ import annotations

import math
from pathlib import Path

from _common import print_table


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _measured(res: dict) -> dict:
    """A task's backends that ran (a failed one holds only its ``error``)."""
    return {name: b for name, b in res["backends"].items() if "error" not in b}


def _label(name: str, b: dict) -> str:
    return name if b["ran_as"] == name else f"{name} (as {b['ran_as']})"


def print_report(result: dict) -> None:
    """Per task: the cost formula, the rows of every backend, the component timings and NVML telemetry."""
    s, m, peak = result["settings"], result["machine"], result["peak"]
    print(f"DP-IR end to end on {m['device']} ({m['cpu']}; {m['cpu_flags']}), torch {m['torch']}, "
          f"commit {m['commit']}; "
          f"threads {s['threads']}, {s['dtype']}, batch {s['batch']}, median of {s['repeats']} after "
          f"{s['warmup']} warm-up call(s)")
    print(f"peak: {peak['matmul']} matmul in {peak['dtype']}: {peak['tflops']:.3f} TFLOP/s; "
          f"memory: {result['memory_kind']}")
    for task, res in result["tasks"].items():
        c, (w, h) = res["flops"], res["size"]
        x, y = c["x"] / 1e12, c["y"] / 1e12
        print(f"\n{task} {w}x{h} (input {'x'.join(map(str, res['input_shape']))}), tau {res['tau']}, "
              f"NFE {c['nfe']} = 1 IR net + NFE_s {c['nfe_sampler']} denoiser+fusion")
        print(f"  TFLOP/image = x·NFE_s + y = {x:.4g}·{c['nfe_sampler']} + {y:.4g} = {c['total'] / 1e12:.4g}"
              f"   (x = denoiser {c['denoiser'] / 1e12:.4g} + fusion {c['fusion'] / 1e12:.4g}; y = IR net)")
        print(f"  chain T=1000:  x·1000 + y = {c['chain_total'] / 1e12:.4g} TFLOP/image")
        p = res["flops_1280x720"]
        print(f"  at 1280x720 (the paper's size): x·NFE_s + y = {p['x'] / 1e12:.4g}·{p['nfe_sampler']} + "
              f"{p['y'] / 1e12:.4g} = {p['total'] / 1e12:.4g} TFLOP/image; chain {p['chain_total'] / 1e12:.4g}")
        backends = _measured(res)
        for name, b in res["backends"].items():
            if "error" in b:
                print(f"  {name}: FAILED: {b['error']}")
        if not backends:
            continue
        rows = []
        for name, b in backends.items():
            for start in [row for row in ("jump", "forward", "chain") if row in b]:
                r = b[start]
                rows.append({"backend": _label(name, b), "start": start + ("" if r["measured"] else " (extrap.)"),
                             "NFE": r["nfe"], "ms/img": _num(r["ms_per_image"]), "IQR ms": _num(r["spread_ms"]),
                             "img/s": _num(r["images_per_s"]), "ms/NFE": _num(r["ms_per_nfe"]),
                             "TFLOP/img": _num(r["tflop_per_image"]), "TFLOP/s": _num(r["tflops"]),
                             "% peak": _num(r["pct_of_peak"]), "mem MiB": _num(b["peak_mem_mib"]),
                             "× chain": _num(r["speedup_vs_chain"])})
        print_table(rows, list(rows[0]))
        for name, b in backends.items():
            print(f"  {name}: first call {b['first_call_s']:.2f} s" + (f"; {b['note']}" if b["note"] else ""))
        if "compile" in backends and "fast" in backends:
            print("  " + break_even(backends["compile"], backends["fast"]))
        _components(backends)
        _telemetry(backends)
    for note in result["notes"]:
        print(f"note: {note}")


def break_even(compiled: dict, eager: dict) -> str:
    """After how many images torch.compile's first call (compilation) is paid back by its faster jump rows."""
    extra_s = (compiled["first_call_s"] - compiled["jump"]["ms_per_image"] / 1e3) - \
        (eager["first_call_s"] - eager["jump"]["ms_per_image"] / 1e3)
    saved_ms = eager["jump"]["ms_per_image"] - compiled["jump"]["ms_per_image"]
    head = f"compile vs fast: {extra_s:.1f} s more for the first call, {saved_ms:+.1f} ms per image after it"
    if saved_ms <= 0:
        return head + ": never pays off"
    return head + f": pays off after {math.ceil(extra_s * 1e3 / saved_ms)} images"


def _components(backends: dict) -> None:
    """Component timings (ms per call) and each backend's speed-up over the reference."""
    ref = backends.get("reference")
    rows = []
    for comp in next(iter(backends.values()))["components"]:
        row = {"component": comp}
        for name, b in backends.items():
            v = b["components"][comp]
            row[f"{name} ms"] = _num(v and v["median_ms"])
            if ref and name != "reference":
                base = ref["components"][comp]
                row[f"{name} ×"] = _num(base["median_ms"] / v["median_ms"]) if v and base else "-"
        rows.append(row)
    print()
    print_table(rows, list(rows[0]))


def _telemetry(backends: dict) -> None:
    """NVML power, SM clock, utilisation and energy per image of each backend's jump row, or why there are none."""
    nvml = {name: b["nvml"] for name, b in backends.items()}
    if all(n["power_w"] is None for n in nvml.values()):
        print(f"  NVML: {next(iter(nvml.values()))['note']}")
        return
    rows = [{"backend": name, "W": _num(n["power_w"]), "SM MHz": _num(n["sm_clock_mhz"]),
             "util %": _num(n["utilization_pct"]), "J/img": _num(n["energy_per_image_j"])} for name, n in nvml.items()]
    print()
    print_table(rows, list(rows[0]))


def history_rows(result: dict) -> list[dict]:
    """history.csv rows: per backend the measured jump and forward rows (TFLOP/s), the extrapolated chain (the
    jump's speed-up over it) and each component (speed-up over the reference)."""
    s, rows = result["settings"], []
    for task, res in result["tasks"].items():
        case = f"{task} {res['size'][0]}x{res['size'][1]} b{s['batch']} {s['dtype']} {s['threads']}thr"
        backends = _measured(res)
        ref = backends.get("reference")
        for name, b in backends.items():
            base = {"benchmark": "run", "backend": _label(name, b)}
            for start in [row for row in ("jump", "forward") if row in b]:
                r = b[start]
                rows.append({**base, "case": f"{case} {start}", "median_ms": r["ms_per_image"],
                             "spread_ms": r["spread_ms"], "metric": "TFLOP/s", "value": r["tflops"]})
            rows.append({**base, "case": f"{case} chain T=1000 (extrapolated)", "median_ms":
                         b["chain"]["ms_per_image"], "metric": "jump speed-up", "value": b["jump"]["speedup_vs_chain"]})
            for comp, v in b["components"].items():
                if v:
                    r_ms = ref and ref["components"][comp] and ref["components"][comp]["median_ms"]
                    rows.append({**base, "case": f"{case} {comp}", "median_ms": v["median_ms"],
                                 "spread_ms": v["spread_ms"], "metric": "speed-up vs reference",
                                 "value": r_ms / v["median_ms"] if r_ms else None})
    return rows


def plot(result: dict, path: Path) -> None:
    """A PNG of ms/image (jump row) against the output size, one line per task and backend, log-log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["settings"]["sizes"]
    pixels = [w * h / 1e6 for w, h in sizes]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for task, res in result["tasks"].items():
        for name, b in _measured(res).items():
            ax.plot(pixels, b["sweep_ms_per_image"], marker="o", label=f"{task} {_label(name, b)}")
    ax.set(xscale="log", yscale="log", xlabel="output size", ylabel="ms / image",
           title=f"DP-IR on {result['machine']['device']}, {result['settings']['dtype']}, "
                 f"batch {result['settings']['batch']}")
    ax.set_xticks(pixels, [f"{w}x{h}" for w, h in sizes], minor=False)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(True, alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
