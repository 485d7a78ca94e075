#!/usr/bin/env bash
# The prepared GPU check (issue 15): one command, at most 8 minutes on one GPU (one NVIDIA
# H200), writing DIR/gpu_check.json (every figure, the machine) and DIR/gpu_check.log.
#
#   1. once, where pip reaches the package index:   benchmarks/fetch_wheels.sh
#      (wheels of what a GPU machine's image may lack, into benchmarks/wheels/)
#   2. on the GPU machine, from this checkout:      benchmarks/gpu_check.sh --out DIR
#      (estimated 5-6 minutes, not yet run on a GPU; it stops itself by 7.5 minutes)
#
# The dry run, on any machine (the test suite runs it): benchmarks/gpu_check.sh --cpu --out DIR
#
# Steps, in order of value, each in its own time box (benchmarks/gpu_check.py says what
# each measures): the CUDA tests of the suite (pytest -m cuda), ResNet-18 training
# throughput against a DataLoader baseline and the measured bf16 matmul peak, blockwise
# SupCon at n = 65 536 and 262 144, the epoch time of the prototype preset's run and the
# implied GPU-hours of every preset. Exit status 0 when every step is ok, 1 otherwise (the JSON
# says which), 2 for a bad argument (nothing written).
#
# --box STEP=SECONDS gives a step another time box, --budget SECONDS the whole check
# another budget (default 450 s on a GPU). Environment: PYTHON, the interpreter (default:
# the checkout's .venv/bin/python when present, else python3); PROTOLIB_WHEELS, the wheel
# folder (default: benchmarks/wheels).
# protolib itself is not installed there: the check runs it from this checkout.
set -euo pipefail

usage="usage: benchmarks/gpu_check.sh [--cpu] [--out DIR] [--box STEP=SECONDS]... [--budget SECONDS]"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode=()
extra=()
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) mode=(--cpu); shift ;;
        --out)
            if [[ $# -lt 2 || -z "$2" ]]; then
                echo "gpu_check.sh: error: --out needs a folder; $usage" >&2
                exit 2
            fi
            out="$2"; shift 2 ;;
        --box|--budget)  # checked by gpu_check.py: STEP=SECONDS, SECONDS
            if [[ $# -lt 2 ]]; then
                echo "gpu_check.sh: error: $1 needs a value; $usage" >&2
                exit 2
            fi
            extra+=("$1" "$2"); shift 2 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *)
            echo "gpu_check.sh: error: unknown argument '$1';" \
                "allowed: --cpu, --out DIR, --box STEP=SECONDS, --budget SECONDS" >&2
            exit 2 ;;
    esac
done
out="${out:-$root/results/gpu_check/$(date +%Y%m%d-%H%M%S)}"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
if ! command -v "$PYTHON" >/dev/null; then
    echo "gpu_check.sh: error: PYTHON '$PYTHON' is not an interpreter here; set PYTHON" >&2
    exit 2
fi

# What the check needs beyond a GPU machine's image: jsonschema (the pipeline's planning
# validates the presets with it). Installed from the wheels only when it is missing, into
# a temporary folder that goes first on PYTHONPATH; without it the check still runs and
# the JSON records why the presets' GPU-hours are missing.
wheels="${PROTOLIB_WHEELS:-$root/benchmarks/wheels}"
if ! "$PYTHON" -c "import jsonschema" 2>/dev/null; then
    shopt -s nullglob
    found=("$wheels"/*.whl)
    shopt -u nullglob
    if [[ ${#found[@]} -gt 0 ]]; then
        site="$(mktemp -d)"
        trap 'rm -rf "$site"' EXIT
        if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$site" "${found[@]}"; then
            # no pip: a wheel is a zip archive laid out for site-packages
            for wheel in "${found[@]}"; do "$PYTHON" -m zipfile -e "$wheel" "$site"; done
        fi
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check.sh: note: jsonschema is missing and $wheels holds no wheels" \
            "(benchmarks/fetch_wheels.sh): the presets' GPU-hours will be missing" >&2
    fi
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
status=0
"$PYTHON" "$root/benchmarks/gpu_check.py" "${mode[@]}" "${extra[@]}" --out "$out" || status=$?
exit "$status"
