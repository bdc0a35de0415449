#!/usr/bin/env bash
# PyTorch on TPU needs an environment of its own: torch_xla must match torch's version exactly, the
# newest torch_xla on the package index is 2.9, and this project pins torch 2.13.0 for its CPU
# environment. This makes that environment (default .venv-xla) with the newest matching pair and the
# project's other dependencies, read from pyproject.toml so that they have one home.
#
#   scripts/torch-xla-env.sh && .venv-xla/bin/bench run --device tpu --framework torch
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-xla}
pair=("torch==2.9.0" "torch_xla[tpu]==2.9.0")
python3 -m venv "$venv"
"$venv/bin/pip" install -q "${pair[@]}"
mapfile -t deps < <("$venv/bin/python" -c '
import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if not dep.startswith("torch"):  # the pair above replaces the pinned torch
        print(dep)')
"$venv/bin/pip" install -q "${deps[@]}"
"$venv/bin/pip" install -q --no-deps -e .
# pip check, less the one mismatch made on purpose: this project's torch pin, replaced by the pair
broken=$("$venv/bin/pip" check | grep -v -e '^practical-conformer-bench .* requires torch' -e '^No broken requirements' || true)
if [ -n "$broken" ]; then echo "$broken" >&2; exit 1; fi
echo "torch-xla-env: $venv ready (${pair[*]})"
