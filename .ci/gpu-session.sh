#!/usr/bin/env bash
# One prepared GPU session (issue 16): install attnbench against the machine's own torch, build
# the PSAL kernels with CUDA, then `attnbench check --device cuda`, the memory suite (fwd and
# fwd+bwd) and the speed suite's psal-target preset on the GPU, and the GPU tests (-m gpu).
# Usage: OUT=/some/folder bash .ci/gpu-session.sh   (every log and record lands in $OUT)
# Each step has its own time limit, so a hang in one still leaves the others' results.
set -uo pipefail
OUT=${OUT:-results/runs/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/attnbench-ext}
LOG="$OUT/session.log"
DEVICE=${DEVICE:-cuda}    # DEVICE=cpu EXTRA="--sizes 16" rehearses this script on a machine without a GPU
EXTRA=${EXTRA:-}
AB=/tmp/attnbench-cli
printf '#!/bin/sh\nexec %s -c "import sys; from attnbench.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' "$PY" >"$AB"
chmod +x "$AB"
step() { echo "== $(date -u +%T) $*" | tee -a "$LOG"; }

step "machine"
{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >>"$LOG"
if [ "$DEVICE" = cuda ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")')}
fi

step "install (no deps: the machine's torch; baselines' pure-Python wheels from .whl if carried)"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/attnbench-site .whl/*.whl >>"$LOG" 2>&1 \
    && export PYTHONPATH=/tmp/attnbench-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || step "FAILED: pip install -e ."

step "build the PSAL kernels (CUDA arch ${TORCH_CUDA_ARCH_LIST:-none})"
time timeout 300 "$PY" -m attnbench_plugins.psal_build >>"$LOG" 2>&1 || step "FAILED: kernel build"

step "attnbench check --device $DEVICE"
timeout 300 "$AB" check --device "$DEVICE" --json >"$OUT/check-$DEVICE.json" 2>>"$LOG"
step "check exit status $?"

step "memory suite on the GPU: fwd and fwd+bwd, one process per mechanism in parallel (memory is per process)"
rm -rf /tmp/mem; mkdir -p /tmp/mem
for m in full flash local linear performer reformer psal-1 psal-3 psal-aggreg knn-exact; do
  (timeout 200 "$AB" run memory --device "$DEVICE" --mode both --mechanisms $m $EXTRA --out /tmp/mem/$m.jsonl --no-table >/tmp/mem/$m.log 2>&1) &
done
wait
cat /tmp/mem/*.jsonl >"$OUT/memory-table1-$DEVICE.jsonl"
tail -n 3 /tmp/mem/*.log >>"$LOG"

step "speed suite, psal-target preset (flash and PSAL in one run, alone on the GPU)"
timeout 240 "$AB" run speed --preset psal-target --device "$DEVICE" $EXTRA --out "$OUT/speed-psal-target-$DEVICE.jsonl" --no-table >>"$LOG" 2>&1
step "speed exit status $?"

step "GPU tests: pytest -m gpu"
timeout "${PYTEST_TIMEOUT:-200}" "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests/ >"$OUT/pytest-gpu.log" 2>&1
step "pytest exit status $?"
tail -n 5 "$OUT/pytest-gpu.log" >>"$LOG"
step "done"
