#!/usr/bin/env bash
# Wheels of what benchmarks/gpu_check.sh needs beyond a GPU machine's image, for a machine
# that cannot download. Run it once where pip reaches the package index:
#
#     benchmarks/fetch_wheels.sh [DIR]        # default DIR: benchmarks/wheels (git-ignored)
#
# then bring the checkout, with DIR, to the GPU machine and run there
#
#     benchmarks/gpu_check.sh --out OUT       # PROTOLIB_WHEELS=DIR when DIR is elsewhere
#
# which installs them (pip install --no-index --no-deps --target, a temporary folder put
# on PYTHONPATH) only when jsonschema is missing.
#
# The image assumed: CPython 3.12 on x86-64 Linux with torch, torchvision, timm, numpy,
# scipy, pandas, pyarrow, scikit-learn, matplotlib, pytest, pytest-xdist, hypothesis,
# pyyaml, tqdm and tabulate (and their dependencies: attrs comes with hypothesis,
# typing-extensions with torch). What the check imports beyond that: jsonschema, with
# which protolib.pipeline.plan validates the presets (for their GPU-hours), and its
# dependencies. Found by running the check's dry run with every other package of the
# project's environment hidden from imports; protolib runs from the checkout
# (PYTHONPATH), and duckdb, mlflow and snakemake are not imported by the check. About
# 0.5 MiB in all. The versions are those of the project's tested environment.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/benchmarks/wheels}"
python="${PYTHON:-python3}"
wheels=(
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1  # compiled: the CPython 3.12 manylinux wheel
)
mkdir -p "$dir"
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d "$dir" "${wheels[@]}"
echo "fetch_wheels.sh: $(find "$dir" -name '*.whl' | wc -l) wheels in $dir ($(du -sh "$dir" | cut -f1))"
