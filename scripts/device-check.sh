#!/usr/bin/env bash
# The first thing to run on a new accelerator host: what each framework sees, the model tests on the
# device (streaming == forward, JAX == PyTorch at float32 "highest"), the no-host-work guard, and a
# quick run of the ladder at batch 1 and 64 in every framework the device supports (PyTorch eager and,
# on a GPU, CUDA graphs; ONNX Runtime with the CUDA execution provider where onnxruntime-gpu is installed). Everything goes
# into one folder, to commit under reports/ with the card named.
#
#   scripts/device-check.sh gpu                 # -> reports/device-check/<UTC time>-gpu/
#   scripts/device-check.sh tpu reports/tpu-v5e
#   scripts/device-check.sh cpu /tmp/check      # what CI's machine can run
#
# Uses .venv/bin/ unless BENCH_PYTHON names another interpreter. Exit status: the worst of the steps.
set -uo pipefail
cd "$(dirname "$0")/.."
device=${1:-gpu}
out=${2:-reports/device-check/$(date -u +%Y%m%dT%H%M%SZ)-$device}
python=${BENCH_PYTHON:-.venv/bin/python}
case "$device" in cpu|gpu|tpu) ;; *) echo "device-check: device must be cpu, gpu or tpu, not '$device'" >&2; exit 2 ;; esac
mkdir -p "$out"
status=0
step() {  # step NAME COMMAND...: run it, keep its output in $out/NAME.txt, remember a failure
  local name=$1; shift
  echo "== $name: $*" | tee "$out/$name.txt"
  "$@" 2>&1 | tee -a "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$out/$name.txt"
  [ "$rc" -gt "$status" ] && status=$rc
}

step env "$python" -m bench.cli env
step pip-check "$python" -m pip check
# A TPU opens in one process at a time, and the model tests hold JAX and PyTorch in one process: on a
# TPU they run on its host CPU; the run below measures each framework on the TPU in its own process.
test_device=$device; [ "$device" = tpu ] && test_device=cpu
step model-tests env BENCH_TEST_DEVICE="$test_device" "$python" -m pytest -q -p no:cacheprovider \
  tests/test_models.py tests/test_host_transfers.py tests/test_onnxruntime.py
# On a GPU, PyTorch also replays the step as CUDA graphs (the serving path without launch overhead).
modes=eager; [ "$device" = gpu ] && modes=eager,cudagraphs
step run "$python" -m bench.cli run --quick --device "$device" --batch 1,64 --torch-mode "$modes" \
  --out "$out/run" --no-progress
echo "device-check: $out (exit $status)"
exit "$status"
