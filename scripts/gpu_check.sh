#!/usr/bin/env bash
# GPU check for cryograd: the GPU tests and the GPU benchmark in one run.
#
#   scripts/gpu_check.sh [RESULTS_DIR]        (default ./gpu-results)
#   scripts/gpu_check.sh --fetch-wheels       (on a machine with network: see below)
#
# Writes into RESULTS_DIR:
#   gpu_check.log   everything, in order (environment, tests, benchmark)
#   env.txt         device, driver, python, torch, triton, cupy
#   pytest.log      the GPU tests (pytest -m gpu)
#   bench.log       the benchmark's output; bench.txt its table; bench.json the same numbers
#   summary.txt     one line per step with its exit status
#
# Meant for a bare GPU machine holding a copy of the repository, with CUDA torch, triton and cupy
# installed system-wide and no network: it uses `python3` from PATH unless .venv holds a CUDA
# torch, installs nothing from the network, and makes `cryograd` importable (pip install --no-deps
# -e ., else PYTHONPATH=src). Pure-Python packages the GPU image lacks (mrcfile, starfile,
# torch-fourier-slice and its two helpers) can travel as wheels in .whl/: run
# `scripts/gpu_check.sh --fetch-wheels` where pip reaches PyPI, carry .whl along (keep it out of
# git: `echo /.whl/ >> .git/info/exclude`), and this script installs them into a private folder.
# Each step is time-boxed so that the whole run stays under about 8 minutes.
# Environment: GPU_CHECK_TEST_TIMEOUT (s, default 180), GPU_CHECK_BENCH_TIMEOUT (s, default 240),
# GPU_CHECK_BENCH_ARGS (extra arguments for benchmarks/bench_gpu.py).

set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1

WHEELS=(mrcfile starfile torch-fourier-slice torch-grid-utils torch-image-interpolation)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    PIP_PY=python3
    [[ -x .venv/bin/python ]] && PIP_PY=.venv/bin/python
    mkdir -p .whl
    exec "$PIP_PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation py --abi none --platform any -d .whl "${WHEELS[@]}"
fi

RESULTS_DIR="${1:-./gpu-results}"
mkdir -p "$RESULTS_DIR" || exit 1
RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"
LOG="$RESULTS_DIR/gpu_check.log"
SUMMARY="$RESULTS_DIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-180}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-240}"
export PYTHONUNBUFFERED=1

say() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
step() {  # step NAME OUTFILE CMD...: run CMD into OUTFILE, append it to the log, record the status
    local name="$1" out="$2"; shift 2
    say "step $name: $*"
    local t0=$SECONDS
    "$@" >"$out" 2>&1
    local rc=$?
    cat "$out" >>"$LOG"
    tail -n 60 "$out"
    [[ $rc == 124 || $rc == 137 ]] && say "step $name TIMED OUT"
    echo "$name rc=$rc ($((SECONDS - t0)) s)" | tee -a "$SUMMARY" "$LOG"
    return "$rc"
}

# --- which python ------------------------------------------------------------------------------
PY=python3
if [[ -x .venv/bin/python ]] && .venv/bin/python -c \
    'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    PY="$REPO/.venv/bin/python"
fi
say "python: $(command -v "$PY" || echo "$PY")"

# --- pure-Python wheels carried along (no network here) -----------------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
    SITE="$(mktemp -d /tmp/cryograd-site.XXXX)"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        say "installed carried wheels into $SITE: $(ls .whl | tr '\n' ' ')"
    else
        say "could not install the wheels in .whl (see log); going on without them"
    fi
fi

# --- cryograd importable from this checkout ---------------------------------------------------
cryograd_here() {
    "$PY" -c "import cryograd, pathlib, sys; \
sys.exit(0 if pathlib.Path(cryograd.__file__).resolve().is_relative_to(pathlib.Path('$REPO/src').resolve()) else 1)" \
        >/dev/null 2>&1
}
if ! cryograd_here; then
    say "installing cryograd from $REPO (pip install --no-deps --no-build-isolation -e .)"
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1 || true
fi
if ! cryograd_here; then
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    say "using PYTHONPATH=$PYTHONPATH"
fi

# --- environment ------------------------------------------------------------------------------
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
        || echo "nvidia-smi not available"
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "cupy", "numpy", "mrcfile", "starfile", "torch_fourier_slice",
             "cryograd"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as exc:  # report, do not fail
        print(name, "NOT IMPORTABLE:", type(exc).__name__, exc)
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("cuda device:", p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs",
          "torch cuda", torch.version.cuda)
else:
    print("torch sees NO CUDA device")
EOF
} >"$RESULTS_DIR/env.txt" 2>&1
cat "$RESULTS_DIR/env.txt" >>"$LOG"
cat "$RESULTS_DIR/env.txt"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    say "no CUDA device visible to $PY: nothing to check"
    echo "no-cuda rc=1" >>"$SUMMARY"
    exit 1
fi

# --- GPU tests ----------------------------------------------------------------------------------
# The GPU-marked tests of the whole suite (kernel comparisons at full size, CuPy round trips, ...).
step tests "$RESULTS_DIR/pytest.log" timeout -k 10 "$TEST_TIMEOUT" \
    "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors tests/
TESTS_RC=$?

# --- GPU benchmark ------------------------------------------------------------------------------
# shellcheck disable=SC2086
step bench "$RESULTS_DIR/bench.log" timeout -k 10 "$BENCH_TIMEOUT" \
    "$PY" benchmarks/bench_gpu.py --out "$RESULTS_DIR" \
    --time-budget "$((BENCH_TIMEOUT - 20))" ${GPU_CHECK_BENCH_ARGS:-}
BENCH_RC=$?

say "done: tests rc=$TESTS_RC, bench rc=$BENCH_RC; results in $RESULTS_DIR"
cat "$SUMMARY"
[[ $TESTS_RC == 0 && $BENCH_RC == 0 ]]
