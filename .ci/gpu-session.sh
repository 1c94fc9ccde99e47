#!/usr/bin/env bash
# One prepared GPU session: the GPU table (time and peak memory of every mechanism that runs on
# the card, fwd and fwd+bwd, 64-512 px, flash at 512 px first), `attnbench check --device cuda`,
# the GPU tests, and every PSAL CUDA costing variant built and profiled (time, kernels, achieved
# patch-read bandwidth vs the card's, identity with the CPU search on the GPU).
#
# Usage, as one device call (a call may run 600 s at most; the whole session stays inside
# BUDGET_S, default 560 s, so it always ends with its logs):
#     OUT=$OUT bash .ci/gpu-session.sh
# A second call re-runs what is missing, e.g. STEPS="speed speed-bwd" RESUME=1 OUT=$OUT bash ...
# (RESUME=1 keeps the results files and runs only cells without a final record).
# Rehearsal without a GPU (tiny sizes; CPU records are never published):
#     DEVICE=cpu EXTRA="--sizes 16" PROFILE_SIZES=24 KERNEL_SIZE=16 OUT=/tmp/rehearsal bash .ci/gpu-session.sh
#
# Environment: DEVICE (cuda); EXTRA (extra `attnbench run` flags for the suite steps);
#   STEPS (default "build target check variants speed speed-bwd pytest kernels", run in that
#   order: the headline first, then what is quick); VARIANTS (PSAL CUDA costing variants,
#   plugins/psal_build.py's CUDA_VARIANTS; default "thread group8 group16 group32");
#   PROFILE_SIZES ("256 512"); KERNEL_SIZE (256); BUDGET_S (560); T_<STEP> per-step limits.
# Steps: build   the PSAL extension (default variant; the other variants build in the background,
#                4 compile jobs each, their own cache entries);
#        target  speed psal-target: flash, psal-3, psal-1, psal-aggreg at 256 and 512 px, fwd
#                (time, memory, FLOPs): PSAL-3 vs flash at 512 px;
#        check   attnbench check --device cuda (JSON);
#        variants .ci/gpu_profile.py per variant: psal-3 at PROFILE_SIZES, profiler trace (CUDA
#                activity), achieved patch-read bandwidth vs the card's nominal and copy
#                bandwidth, CUDA search vs CPU search on integer images (identical?);
#        speed / speed-bwd  speed presets gpu (fwd) and gpu-bwd (fwd+bwd), 64-512 px;
#        pytest  pytest -m gpu;
#        kernels .ci/gpu_profile.py: every mechanism's kernels at KERNEL_SIZE px.
# What the device lacks: it has no network. Pure-Python wheels of the baselines' dependencies go
# in .whl/ here first (`bash .ci/pack-wheels.sh`) and travel in the device call's carry list
# (carry: [".whl"]); NATTEN / xformers only as wheels built for the device's torch, otherwise those
# mechanisms record `unavailable` with the reason.
# Records in $OUT: machine.txt, session.log, <step>.log, target-/speed-gpu-/speed-gpu-bwd-<device>.jsonl,
# check-<device>.json, psal-variant-<name>.json, kernels-<device>.json, pytest.log. A CUDA run is
# published under results/published/gpu-<card>/ (card: machine.txt's GPU name, lower-case, dashes).
set -uo pipefail
OUT=${OUT:-results/runs/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/attnbench-ext}
LOG="$OUT/session.log"
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
STEPS=${STEPS:-build target check variants speed speed-bwd pytest kernels}
VARIANTS=${VARIANTS:-thread group8 group16 group32}
PROFILE_SIZES=${PROFILE_SIZES:-256 512}
KERNEL_SIZE=${KERNEL_SIZE:-256}
DEADLINE=$((SECONDS + ${BUDGET_S:-560}))
RUNFLAGS=(--device "$DEVICE" --no-table)
[ "${RESUME:-0}" = 1 ] && RUNFLAGS+=(--resume)
AB=$(mktemp /tmp/attnbench-cli.XXXXXX)  # the CLI on the machine's python (pip's script may point elsewhere)
trap 'rm -f "$AB"' EXIT
printf '#!/bin/sh\nexec %s -c "import sys; from attnbench.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' "$PY" >"$AB"
chmod +x "$AB"
step() { echo "== $(date -u +%T) +$((SECONDS))s $*" | tee -a "$LOG"; }
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
# run NAME LIMIT CMD...: one step, killed at its own limit or at the session's deadline
# (whichever comes first), its output in $OUT/NAME.log
run() {
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS - 5))
  if [ "$left" -lt 15 ]; then step "$name SKIPPED: the session's budget is spent"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  step "$name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  step "$name exit status $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
  tail -n 4 "$OUT/$name.log" >>"$LOG"
}

step "machine"
{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >>"$LOG"
if [ "$DEVICE" = cuda ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")')}
fi

step "install (no deps: the machine's torch; baselines' pure-Python wheels from .whl if carried)"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/attnbench-site .whl/*.whl >>"$LOG" 2>&1 \
    && export PYTHONPATH=/tmp/attnbench-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || step "FAILED: pip install -e ."

BUILDERS=()
if wanted build; then
  if [ "$DEVICE" = cuda ]; then  # without CUDA every variant is the same CPU build: nothing to add
    for v in $VARIANTS; do
      [ "$v" = thread ] && continue
      (ATTNBENCH_PSAL_CUDA_VARIANT=$v MAX_JOBS=4 timeout 300 "$PY" -m attnbench_plugins.psal_build \
        >"$OUT/build-$v.log" 2>&1; echo "exit status $?" >>"$OUT/build-$v.log") &
      BUILDERS+=($!)
    done
  fi
  run build "${T_BUILD:-150}" "$PY" -m attnbench_plugins.psal_build
fi

wanted target && run target "${T_TARGET:-70}" "$AB" run speed --preset psal-target "${RUNFLAGS[@]}" $EXTRA \
  --out "$OUT/target-$DEVICE.jsonl"
wanted check && run check "${T_CHECK:-80}" bash -c '"$0" check --device "$1" --json >"$2"' "$AB" "$DEVICE" \
  "$OUT/check-$DEVICE.json"

if wanted variants; then
  for pid in "${BUILDERS[@]}"; do wait "$pid"; done
  for v in $VARIANTS; do
    export ATTNBENCH_PSAL_CUDA_VARIANT=$v
    run "variant-$v" "${T_VARIANT:-25}" "$PY" .ci/gpu_profile.py --device "$DEVICE" --mechanisms psal-3 \
      --sizes $PROFILE_SIZES --check-kernels --out "$OUT/psal-variant-$v.json"
  done
  unset ATTNBENCH_PSAL_CUDA_VARIANT
fi

wanted speed && run speed "${T_SPEED:-130}" "$AB" run speed --preset gpu "${RUNFLAGS[@]}" $EXTRA \
  --out "$OUT/speed-gpu-$DEVICE.jsonl"
wanted speed-bwd && run speed-bwd "${T_SPEED_BWD:-110}" "$AB" run speed --preset gpu-bwd "${RUNFLAGS[@]}" $EXTRA \
  --out "$OUT/speed-gpu-bwd-$DEVICE.jsonl"
wanted pytest && run pytest "${T_PYTEST:-60}" "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests/
wanted kernels && run kernels "${T_KERNELS:-40}" "$PY" .ci/gpu_profile.py --device "$DEVICE" --sizes "$KERNEL_SIZE" \
  --mechanisms flash sdpa-efficient sdpa-cudnn full local linear performer reformer psal-1 psal-3 psal-aggreg \
  knn-exact flex-local natten --out "$OUT/kernels-$DEVICE.json"
for pid in "${BUILDERS[@]}"; do kill "$pid" 2>/dev/null; done
step "done"
