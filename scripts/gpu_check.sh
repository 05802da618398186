#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and its own PyTorch (any version dpir_fast supports), offline:
# builds dpir_fast._C in place for that GPU, then runs the CUDA tests, compute-sanitizer over the kernels' tests,
# the op microbenchmarks and benchmarks/run.py, each step in its own time budget (8 minutes in all on an
# H100/H200-class GPU), a failure never stopping the next. Nothing is installed or resolved.
#
#   scripts/gpu_check.sh [--dry-run] OUTDIR        (PYTHON=... picks the interpreter)
#
# OUTDIR gets 8 flat files: summary.md (read it first), stages.tsv, build.log, tests.log, bench.log, history.csv
# (the rows this run appended to benchmarks/results/history.csv), run_deblur_cuda.json, run_sr4x_cuda.json.
# --dry-run, or a machine where torch sees no GPU: prints each step and its command, runs nothing, exits 0.
# Otherwise the exit status is 1 when a step failed.
set -u

usage() { echo "usage: scripts/gpu_check.sh [--dry-run] OUTDIR" >&2; exit 2; }
DRY=0 OUT=""
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        -*) usage ;;
        *) [[ -z $OUT ]] || usage; OUT=$(realpath -m -- "$arg") ;;
    esac
done
[[ -n $OUT ]] || usage
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the checkout's dpir_fast, with the _C built here
PY=${PYTHON:-$(command -v python || command -v python3)}
JOBS=$(nproc)
HISTORY=benchmarks/results/history.csv
KERNEL_TESTS=(tests/test_dau_tail.py tests/test_skff.py tests/test_noise.py tests/test_sampler_kernels.py
              tests/test_fusion_kernels.py)
DEADLINE=$((SECONDS + 470))   # 8 minutes less the summaries: a step's budget is cut to what is left

ARCH=$("$PY" -c 'import torch; assert torch.cuda.is_available(); print("%d.%d" % torch.cuda.get_device_capability())' \
       2>/dev/null)
if [[ -z $ARCH ]]; then
    (( DRY )) || echo "gpu_check: torch ($PY) sees no CUDA device: printing the steps only"
    DRY=1 ARCH=MAJOR.MINOR   # GPU 0's compute capability
fi
NO_SANITIZER="" NO_PYTEST=""
command -v compute-sanitizer > /dev/null || NO_SANITIZER="compute-sanitizer is not on PATH; the CUDA toolkit has it"
"$PY" -c 'import pytest' 2> /dev/null ||
    NO_PYTEST="pytest is not importable by $PY; put it (pure Python: pytest, pluggy, iniconfig) on PYTHONPATH"
NO_SANITIZER=${NO_SANITIZER:-$NO_PYTEST}

if (( DRY )); then
    echo "gpu_check dry run: OUTDIR $OUT; stage, step, budget (s), command"
else
    mkdir -p "$OUT" || exit 2
    rm -f "$OUT"/{summary.md,stages.tsv,build.log,tests.log,bench.log,history.csv} "$OUT"/run_{deblur,sr4x}_cuda.json
    touch "$OUT"/{build,tests,bench}.log
    HISTORY_LINES=$( (wc -l < "$HISTORY") 2>/dev/null || echo 0)
fi
FAILED=0

# The words of a command as a shell reads them back, quoted only where needed.
quoted() {
    local word line=""
    for word in "$@"; do
        [[ $word =~ ^[][A-Za-z0-9_./,:=+@%-]+$ ]] || word=$(printf %q "$word")
        line+="$word "
    done
    echo "${line% }"
}

# step STAGE NAME BUDGET LOG COMMAND...: COMMAND under timeout (BUDGET seconds, cut to what is left), its output
# appended to OUTDIR/LOG under a header line, its result a line of stages.tsv; then summary.md is rewritten.
# SKIP=reason records the step as skipped instead.
step() {
    local stage=$1 name=$2 budget=$3 log=$4; shift 4
    local cmd; cmd=$(quoted "$@")
    if (( DRY )); then
        printf '%-12s %-20s %4s  %s%s\n' "$stage" "$name" "$budget" "$cmd" "${SKIP:+  (skipped: $SKIP)}"
        return
    fi
    local limit=$((DEADLINE - SECONDS)) where result note="" start=$SECONDS rc
    (( budget < limit )) && limit=$budget
    where="$log:$(($(wc -l < "$OUT/$log") + 1))"   # the header's line
    echo "#### gpu_check $stage / $name (budget $limit s): $cmd" >> "$OUT/$log"
    if [[ -n ${SKIP:-} ]]; then
        result=skipped note=$SKIP
    elif (( limit < 5 )); then
        result=skipped note="no time left of the 8 minutes"
    else
        timeout -k 5 "$limit" "$@" >> "$OUT/$log" 2>&1
        rc=$?
        case $rc in
            0) result=passed ;;
            124|137) result=failed note="timed out after $limit s" ;;
            *) result=failed note="exit status $rc" ;;
        esac
    fi
    [[ $result == failed ]] && FAILED=1
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$stage" "$name" "$result" "$((SECONDS - start))" "$budget" "$where" \
        "$note" "$cmd" >> "$OUT/stages.tsv"
    echo "[$stage] $name: $result${note:+ ($note)}, $((SECONDS - start)) s"
    "$PY" scripts/gpu_summary.py "$OUT" --history "$HISTORY" --since "$HISTORY_LINES"
}

# 0. Build _C for this GPU only, against the installed torch, no install; then the build record.
step "0 build" "_C arch $ARCH" 90 build.log env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" DPIR_FAST_FORCE_CUDA=1 \
    "$PY" setup.py build_ext --inplace
step "0 build" "build record" 10 build.log "$PY" -m dpir_fast.cli info
(( DRY )) || sed -n '/^#### gpu_check 0 build \/ build record/,$p' "$OUT/build.log" | tail -n +2

# 1. Every test of the suite that runs on the GPU (the `cuda` mark, tests/conftest.py).
SKIP=$NO_PYTEST step "1 tests" "pytest -m cuda" 80 tests.log "$PY" -m pytest -v -rfE -m cuda tests/

# 2. compute-sanitizer over the extension's and the Triton kernels' CUDA tests; exact allocations for memcheck.
SKIP=$NO_SANITIZER step "2 sanitizer" memcheck 40 tests.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode 99 "$PY" -m pytest -q -rfE -m cuda "${KERNEL_TESTS[@]}"
SKIP=$NO_SANITIZER step "2 sanitizer" racecheck 40 tests.log \
    compute-sanitizer --tool racecheck --error-exitcode 99 "$PY" -m pytest -q -rfE -m cuda "${KERNEL_TESTS[@]}"

# 3. Op microbenchmarks: GB/s against the copy bandwidth each measures, fused FusionNet vs bf16 channels_last eager,
# the engine's CUDA graph vs eager.
for bench in dau:20 skff:12 sampler:15 fusion:20 engine:30; do
    step "3 microbench" "bench_${bench%:*}" "${bench#*:}" bench.log "$PY" "benchmarks/bench_${bench%:*}.py"
done

# 4. End to end, bf16: deblur at the paper's 1280x720; sr4x (NFE 51) at 512x512. torch.compile last, so that a
# budget running out there (run.py stops and still writes what it measured) keeps the other two.
step "4 run.py" "deblur 1280x720" 62 bench.log "$PY" benchmarks/run.py --task deblur --size 1280x720 \
    --backends reference,fast,compile --dtype bf16 --warmup 2 --repeats 5 --json "$OUT/run_deblur_cuda.json"
step "4 run.py" "sr4x 512x512" 45 bench.log "$PY" benchmarks/run.py --task sr4x --size 512x512 \
    --backends reference,fast,compile --dtype bf16 --warmup 2 --repeats 5 --json "$OUT/run_sr4x_cuda.json"

if (( DRY )); then
    echo "at most 470 s in all (a step's budget is cut to what is left); results in OUTDIR/summary.md"
    exit 0
fi
echo "gpu_check: $SECONDS s; $OUT/summary.md"
exit $FAILED
