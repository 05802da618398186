"""Command line: ``dpir-fast restore | info | demo | train-denoiser | train-fusion | bench``.

``restore`` under ``torchrun --nproc_per_node N`` shards its input files across the N processes (file i goes to
rank i mod N, one GPU each, names planned over all files); the train commands run DDP there.

Exit codes: 0 all files done (or skipped because their output exists), 1 some files failed, 2 usage error
(bad arguments or checkpoint, no inputs, an output that would overwrite an input), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cli_common import UsageError, device_arg, resolve_device, torchrun_shard
from .data.images import ImageReadError, find_images, output_suffix, read_image, write_image
from .pipeline import networks_to_compile
from .pretrained import PRETRAINED, checkpoint_path

IO_RULES = """\
image rules:
  inputs: files and folders; folders give their files with an image suffix (png, jpg/jpeg, tif/tiff, bmp, webp,
    gif, ppm/pgm/pbm/pnm, tga, qoi), sorted by name, subfolders only with --recursive; other files in folders
    are listed as ignored. Anything Pillow reads works, 8 or 16 bits a sample (16-bit colour PNG/TIFF at full
    precision).
  grey images are run as RGB and written back as grey (mean of the channels); alpha is kept, resized to the
    output size; palette images are written as RGB(A); the EXIF orientation is applied.
  outputs: OUTDIR/<name>.<ext>, same format and bit depth as the input (gif and other formats become png),
    unless --format; JPEG/WebP at quality 95; 16-bit only in png/tif; jpg and bmp drop alpha. Inputs whose
    output names clash get _2, _3, ... in input order. An output never replaces an input file (exit 2), and an
    existing output is kept unless --overwrite.
  every image uses the same --seed, so its result does not depend on the other files.
  --burst (for burst checkpoints, BSRT): each INPUT is a folder holding one burst; its frames are the .npy, .png
    and .tif/.tiff files, sorted by name, the first the base frame: .npy arrays [4, h, w] (packed R, Gr, Gb, B
    planes) or [H, W] Bayer mosaics (pattern --bayer, default RGGB); grey images are mosaics, 4-channel images
    packed planes. Integer samples are divided by --white-level (default the format's maximum, 65535 for 16
    bits; SyntheticBurst files need 16384), float arrays taken as [0, 1]. The burst's output is
    OUTDIR/<folder>.png, 16-bit, in sRGB through the default camera (dpir_fast.data.DEFAULT_CAMERA)."""


# 1. Progress over files ------------------------------------------------------------------------------------------
class Progress:
    """A bar redrawn in place when `stream` is a TTY, else one line per file; `enabled=False` shows neither."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.done, self.stream, self.enabled = total, 0, stream or sys.stderr, enabled
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self._bar = False

    def start(self, name: str) -> None:
        if self.tty:
            self._draw(name)

    def step(self, name: str, status: str) -> None:
        self.done += 1
        if self.tty:
            self._draw(name)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {name}: {status}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line that stays (errors, warnings), printed even when the bar is off."""
        self._clear()
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        self._clear()

    def _draw(self, name: str) -> None:
        width = shutil.get_terminal_size((80, 20)).columns
        filled = 20 * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'-' * (20 - filled)}] {self.done}/{self.total} {name}"
        self.stream.write("\r" + line[: width - 1].ljust(width - 1))
        self.stream.flush()
        self._bar = True

    def _clear(self) -> None:
        if self._bar:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((80, 20)).columns - 1) + "\r")
            self.stream.flush()
            self._bar = False


# 2. restore ------------------------------------------------------------------------------------------------------
@dataclass
class RestoreReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # outputs that exist (no --overwrite)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def plan_outputs(inputs: list[Path], outdir: Path, fmt: str | None = None) -> list[Path]:
    """OUTDIR/<stem><suffix> for each input; a clash (case-insensitive) gets _2, _3, ... in input order."""
    taken: set[str] = set()
    outputs = []
    for src in inputs:
        stem, suffix = src.stem, output_suffix(src, fmt)
        name, n = stem + suffix, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}_{n}{suffix}"
        taken.add(name.lower())
        outputs.append(outdir / name)
    return outputs


def _check_not_inputs(outputs: list[Path], inputs: list[Path]) -> None:
    """Raise UsageError when an output path is (resolves to, or is a link of) an input file."""
    names = {os.path.normcase(p.resolve()): p for p in inputs}
    inodes = {(st.st_dev, st.st_ino): p for p, st in ((p, p.stat()) for p in inputs)}
    for dst in outputs:
        src = names.get(os.path.normcase(dst.resolve()))
        if src is None and dst.exists():
            st = dst.stat()
            src = inodes.get((st.st_dev, st.st_ino))
        if src is not None:
            raise UsageError(f"the output {dst} would replace the input {src}; choose another -o folder "
                             "(or --format)")


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


def restore_files(pipe, inputs: list[Path], outdir: Path, *, fmt: str | None = None, seed: int = 0,
                  overwrite: bool = False, progress: Progress | None = None, reader=read_image,
                  shard: tuple[int, int] = (0, 1), batch: int = 1) -> RestoreReport:
    """Restore each input file with `pipe` and write OUTDIR/<name>.

    `pipe` is any object with ``scale``, ``device`` and ``__call__(y [1, 3, h, w] in [0, 1], seed)`` returning
    [1, 3, h*scale, w*scale] (with ``batch`` > 1 also a list of such images and seeds → a list: one call per
    ``batch`` files, retried file by file when it fails). Per-file failures are collected in the report, never
    raised. Raises UsageError when an output path is an input file. ``reader(path) -> (y, ImageInfo)`` reads one
    input (default read_image). ``shard=(rank, world)`` restores only the files rank, rank + world, ... (names
    are planned over all inputs).
    """
    outputs = plan_outputs(inputs, outdir, fmt)
    _check_not_inputs(outputs, inputs)
    outdir.mkdir(parents=True, exist_ok=True)
    pairs = list(zip(inputs, outputs))[shard[0]::shard[1]]
    progress = progress or Progress(len(pairs), enabled=False)
    report, pending = RestoreReport(), []
    for src, dst in pairs:
        if dst.exists() and not overwrite:
            progress.start(src.name)
            report.skipped.append(dst)
            progress.step(src.name, f"skipped, {dst} exists (use --overwrite)")
            continue
        pending.append((src, dst))
        if len(pending) == batch:
            _restore_batch(pipe, pending, seed, reader, report, progress)
            pending = []
    if pending:
        _restore_batch(pipe, pending, seed, reader, report, progress)
    progress.close()
    return report


def _restore_batch(pipe, pairs: list[tuple[Path, Path]], seed: int, reader, report: RestoreReport,
                   progress: Progress) -> None:
    """Read the files, restore them in one pipeline call (file by file if that fails), write each result."""
    started, loaded = time.perf_counter(), []
    for src, dst in pairs:
        progress.start(src.name)
        try:
            loaded.append((src, dst, *reader(src)))
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
            _fail(report, progress, src, err, pipe)
    outs = None
    if len(loaded) > 1:
        try:
            with torch.inference_mode():
                outs = pipe([x.to(pipe.device) for _, _, x, _ in loaded], seed=[seed] * len(loaded))
        except Exception as err:  # noqa: BLE001 -- retried file by file below, which names the file that fails
            if _is_oom(err) and torch.cuda.is_available():
                torch.cuda.empty_cache()
    for j, (src, dst, x, info) in enumerate(loaded):
        try:
            if outs is None:
                started = time.perf_counter()
                with torch.inference_mode():
                    out = pipe(x.to(pipe.device), seed=seed)
            else:
                out = outs[j]
            if not torch.isfinite(out).all():
                raise FloatingPointError("the network produced NaN/inf values (try --device cpu or another --tau)")
            write_image(dst, out.float().cpu(), info)  # the suffix picks the format
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
            _fail(report, progress, src, err, pipe)
            continue
        report.written.append(dst)
        seconds = (time.perf_counter() - started) / (len(loaded) if outs is not None else 1)
        progress.step(src.name, f"-> {dst} ({seconds:.1f} s)")


def _fail(report: RestoreReport, progress: Progress, src: Path, err: BaseException, pipe) -> None:
    reason = _reason(err, pipe)
    report.failed.append((src, reason))
    progress.message(f"error: {src}: {reason}")
    progress.step(src.name, "failed")


def _reason(err: BaseException, pipe) -> str:
    if isinstance(err, ImageReadError):
        return err.reason
    if _is_oom(err):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return (f"out of memory on {pipe.device}; try --tile 512 --batch-size 1"
                + (" or --device cpu" if getattr(pipe.device, "type", str(pipe.device)) != "cpu" else ""))
    if isinstance(err, (ValueError, FloatingPointError)):
        return str(err)
    if isinstance(err, OSError):
        return f"cannot write: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"


def _load_pipeline(checkpoint: Path, device: str, task: str | None, tau: int | None):
    """The DPIR pipeline of a checkpoint file on `device` (a seam for tests)."""
    from .pipeline import DPIR

    return DPIR.from_checkpoint(checkpoint, device=device, task=task, tau=tau)


def _burst_reader(pattern: str, white_level: float | None):
    """reader for restore_files: a folder of RAW frames -> ([1, N, 4, h, w], 16-bit PNG ImageInfo)."""
    from .data.burst import read_burst
    from .data.images import ImageInfo

    return lambda folder: (read_burst(folder, pattern, white_level), ImageInfo("PNG", "RGB", 16, False))


def _burst_folders(paths: list[str]) -> list[Path]:
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_dir():
            raise UsageError(f"--burst takes one folder of RAW frames per burst; {p} is "
                             + ("not a folder" if p.exists() else "missing"))
    return list(dict.fromkeys(paths))


def cmd_restore(args: argparse.Namespace) -> int:
    reader, ignored = read_image, []
    if args.burst:
        inputs, reader = _burst_folders(args.inputs), _burst_reader(args.bayer, args.white_level)
    else:
        try:
            inputs, ignored = find_images(args.inputs, recursive=args.recursive)
        except FileNotFoundError as err:
            raise UsageError(str(err)) from None
    for path in ignored:
        print(f"ignored (not an image suffix): {path}", file=sys.stderr)
    if not inputs:
        raise UsageError("no input images found in " + ", ".join(map(str, args.inputs)))
    try:
        checkpoint = checkpoint_path(args.checkpoint)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    try:
        pipe = _load_pipeline(checkpoint, resolve_device(args.device), args.task, args.tau)
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError
        raise UsageError(f"cannot load {args.checkpoint}: {err}") from None
    ensemble = {} if args.ir_ensemble is None else {"ir_ensemble": args.ir_ensemble}
    try:
        pipe.configure(dtype=args.dtype, tile=args.tile, tile_overlap=args.tile_overlap, batch_size=args.batch_size,
                       compile=args.compile, **ensemble)
    except ValueError as err:   # a self-ensemble of a burst net
        raise UsageError(str(err)) from None
    takes_bursts = getattr(pipe, "burst_frames", None) is not None
    if takes_bursts != args.burst:
        raise UsageError("this checkpoint's IR network takes RAW bursts: pass --burst with one folder of frames "
                         "per burst" if takes_bursts else "--burst needs a checkpoint whose IR network takes RAW "
                         "bursts (BSRT)")
    if not takes_bursts and pipe.in_channels != 3:
        raise UsageError(f"this checkpoint's IR network takes {pipe.in_channels}-channel input; "
                         "restore works on single RGB/grey images")
    rank, world, _ = torchrun_shard()
    progress = Progress(len(inputs[rank::world]), enabled=not args.quiet)
    report = restore_files(pipe, inputs, args.output, fmt=args.format, seed=args.seed, overwrite=args.overwrite,
                           progress=progress, reader=reader, shard=(rank, world), batch=args.batch_size)
    if not args.quiet or report.failed:
        print(f"{f'[rank {rank}/{world}] ' if world > 1 else ''}{len(report.written)} written, {len(report.skipped)} skipped (output exists), "
              f"{len(report.failed)} failed; outputs in {args.output}", file=sys.stderr)
    return report.exit_code


# 3. info ---------------------------------------------------------------------------------------------------------
def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # noqa: BLE001 -- an optional package may fail to import in any way
        return "not installed"


def backend_lines() -> list[str]:
    """How dpir_fast._C was built, and which implementation each op family runs per device (from _backend)."""
    from . import _backend, _ext

    info = _ext.build_info()
    if info is None:
        built = "no build record"
    else:
        built = f"built for torch {info.get('torch')}, " + (
            f"CUDA {info['cuda']} (nvcc {info.get('nvcc')}, arch {info.get('arch_list')})" if info.get("cuda")
            else "CPU only")
    error = _ext.load_error()
    lines = [f"_C         {built}" + (f"; not loaded: {error}" if error else "")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        dtype, why = _backend.default_precision(device)
        lines.append(f"precision  {dtype} on {device} by default ({why}; --dtype / DPIR(dtype=...) overrides)")
    for family, ops in (("ext", "dau_tail, skff"), ("triton", "sampler updates, fusion")):
        for device in devices:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    choice = _backend.resolve(family, device)
                    reason = _backend.unavailable_reason(family, device) if choice == "reference" else None
            except ValueError as err:  # a bad DPIR_FAST_BACKEND
                choice, reason = "error", str(err)
            if choice == "reference" and reason is None:
                reason = f"{_backend.ENV}={_backend.requested()}"
            lines.append(f"backend    {family} ({ops}) on {device}: {choice}" + (f" ({reason})" if reason else ""))
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    import numpy
    import PIL

    lines = [f"dpir_fast  {_version('dpir_fast')}",
             f"Python     {platform.python_version()} ({sys.executable})",
             f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
             f"CUDA       {'available' if torch.cuda.is_available() else 'not available'}"]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(i)
        lines.append(f"  cuda:{i}   {torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    lines += [f"Triton     {_version('triton')}", f"numpy      {numpy.__version__}", f"Pillow     {PIL.__version__}",
              *backend_lines()]
    print("\n".join(lines))
    return 0


# 4. bench ---------------------------------------------------------------------------------------------------------
BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def cmd_bench(argv: list[str]) -> int:
    """``dpir-fast bench ARGS``: ``benchmarks/run.py ARGS`` of the source checkout this package runs from."""
    if not BENCH_SCRIPT.is_file():
        print(f"dpir-fast bench: error: {BENCH_SCRIPT} not found; the benchmarks live in the source checkout "
              "(install it with pip install -e .)", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("dpir_fast_bench_run", BENCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv, prog="dpir-fast bench")


# 5. Parser and entry point ---------------------------------------------------------------------------------------
def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _networks(text: str) -> tuple[str, ...]:
    try:
        return networks_to_compile(text if text == "all" else [n.strip() for n in text.split(",") if n.strip()])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpir-fast", description="DP-IR image reconstruction.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("restore", help="restore image files with a pipeline checkpoint",
                       description="Restore image files (super-resolve, deblur) or RAW bursts (--burst) with a "
                                   "DP-IR pipeline checkpoint.",
                       epilog=IO_RULES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder (created)")
    p.add_argument("--checkpoint", required=True, metavar="FILE|NAME",
                   help="pipeline file written by dpir_fast.save_checkpoint, or a shipped pipeline "
                        f"({', '.join(sorted(PRETRAINED))})")
    p.add_argument("--task", choices=["sr4x", "deblur", "burst"], help="use this task's sampler preset (tau, tail)")
    p.add_argument("--tau", type=_positive, help="number of diffusion steps run by the networks (overrides)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every image (default 0)")
    p.add_argument("--ir-ensemble", type=int, choices=[1, 2, 4, 8], metavar="N",
                   help="average the IR net over N flips/transpositions of each image: 1, 2, 4 or 8, N times its "
                        "cost (default: the checkpoint's; the demos ship 8)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="network precision (default bf16 on CUDA "
                   "and on CPUs with native bf16, fp32 on others; `dpir-fast info` says which)")
    p.add_argument("--tile", type=_positive, metavar="N", help="tile side in output pixels (default: as large as "
                   "free memory allows; large images are restored in overlapping, blended tiles)")
    p.add_argument("--tile-overlap", type=_non_negative, default=64, metavar="N",
                   help="overlap of neighbouring tiles in output pixels (default 64)")
    p.add_argument("--batch-size", type=_positive, default=4, metavar="N",
                   help="images (files of one size) or tiles per batch (default 4)")
    p.add_argument("--compile", type=_networks, default=(), metavar="NETS",
                   help="torch.compile these networks: 'all' or a comma-separated list of ir, denoiser, fusion "
                        "(the first image of each size compiles; pays off on folders of same-sized images)")
    p.add_argument("--format", choices=["png", "jpg", "tif"], help="output format (default: the input's)")
    p.add_argument("--recursive", action="store_true", help="also take images in subfolders")
    p.add_argument("--burst", action="store_true", help="each INPUT is a folder of RAW frames, one burst")
    p.add_argument("--bayer", choices=["RGGB", "BGGR", "GRBG", "GBRG"], default="RGGB",
                   help="Bayer pattern of mosaic frames with --burst (default RGGB)")
    p.add_argument("--white-level", type=float, metavar="N",
                   help="with --burst: integer samples are divided by N (default the format's maximum)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress, only errors")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("info", help="versions, devices and backends")
    p.set_defaults(func=cmd_info)
    sub.add_parser("bench", add_help=False, help="end-to-end benchmark: ms/image, TFLOPs, memory, power "
                                                  "(benchmarks/run.py; dpir-fast bench --help)")

    from .pretrained.demo import add_parser as add_demo_parser
    from .train.commands import add_parsers as add_train_parsers
    add_demo_parser(sub)
    add_train_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default sys.argv[1:]); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:   # its own parser, in benchmarks/run.py
        return cmd_bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as err:
        print(f"dpir-fast {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
