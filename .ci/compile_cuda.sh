#!/usr/bin/env bash
# Compile-check the CUDA sources in native/ with nvcc, without a GPU and without linking.
#
# What it does (exit 0 = everything below compiled; non-zero = a step failed, and it says which):
#   1. native/psal_cuda.cu -> object file with nvcc, against torch's own headers, with the flags
#      torch.utils.cpp_extension uses for a JIT/setup build of a .cu file (-std=c++20 or whatever
#      this torch uses, -DTORCH_EXTENSION_NAME, -DTORCH_API_INCLUDE_EXTENSION_H, the CXX11 ABI
#      value of this torch, COMMON_NVCC_FLAGS incl. --expt-relaxed-constexpr and the
#      __CUDA_NO_HALF*/BFLOAT16 conversion guards, -fPIC), for every arch in PSAL_CUDA_ARCHS
#      (default "80": sm_80, A100; e.g. PSAL_CUDA_ARCHS="70 80 90").  -DWITH_CUDA is defined.
#      Device code is fully compiled to SASS (ptxas runs), so register/local-memory or template
#      errors in kernels fail here.
#   2. if native/psal_cpu.cpp exists: it is compiled to an object file with the host compiler and
#      -DWITH_CUDA (the configuration in which it binds the <op>_cuda functions), and
#   3. every `*_cuda` function that psal_cpu.o references but does not define must be defined in
#      psal_cuda.o (nm on the mangled names): a signature mismatch between native/psal.h and
#      psal_cuda.cu fails here, as it would at link/load time on a GPU machine.
#   4. psal_cuda.cu again for every other costing variant of the search (PSAL_CUDA_VARIANT switch;
#      names and flags from plugins/psal_build.py's CUDA_VARIANTS), same flags as step 1.
# What it cannot do here: link against libtorch_cuda / libc10_cuda (a CPU-only torch wheel ships
# no CUDA libraries) or run anything.
#
# A CPU-only torch wheel ships the c10/cuda headers but not the generated
# c10/cuda/impl/cuda_cmake_macros.h; when it is missing we define C10_CUDA_NO_CMAKE_CONFIGURE_FILE,
# the switch c10/cuda/CUDAMacros.h itself provides for that case (the generated file only defines
# C10_CUDA_BUILD_SHARED_LIBS, which matters on Windows only).
#
# Environment: PYTHON (default: python), NVCC (default: nvcc), CXX (default: c++),
#              PSAL_CUDA_ARCHS (default: "80"), KEEP_OBJ=1 keeps the temp dir,
#              PSAL_CUDA_VARIANT_LIST (default: every variant but the default one, e.g. "group8").
set -u -o pipefail

PY="${PYTHON:-python}"
NVCC="${NVCC:-nvcc}"
HOSTCXX="${CXX:-c++}"
ARCHS="${PSAL_CUDA_ARCHS:-80}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CU="$ROOT/native/psal_cuda.cu"
CPP="$ROOT/native/psal_cpu.cpp"

fail() { echo "compile_cuda: FAIL: $*" >&2; exit 1; }

command -v "$NVCC" >/dev/null 2>&1 || fail "nvcc not found (NVCC=$NVCC); install the CUDA toolkit or set NVCC"
[ -f "$CU" ] || fail "$CU does not exist"
"$PY" -c "import torch" 2>/dev/null || fail "'$PY' cannot import torch (set PYTHON to the venv's python)"

# Flags as torch.utils.cpp_extension builds them (read from this torch, not hard-coded).
FLAGS_OUT="$("$PY" - <<'EOF'
import os, shlex, sysconfig, inspect
import torch
import torch.utils.cpp_extension as ce
src = inspect.getsource(ce)
std = "-std=c++20" if "-std=c++20" in src else "-std=c++17"
incs = list(ce.include_paths())
pyinc = sysconfig.get_path("include", scheme="posix_prefix")
if pyinc:
    incs.append(pyinc)
abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
macros = os.path.join(incs[0], "c10", "cuda", "impl", "cuda_cmake_macros.h")
print("STD=" + std)
print("ABI=%d" % abi)
print("INCS=" + " ".join(shlex.quote("-I" + p) for p in incs))
print("NVCCCOMMON=" + " ".join(shlex.quote(f) for f in ce.COMMON_NVCC_FLAGS))
print("NOMACROS=%d" % (not os.path.exists(macros)))
print("TORCHVER=" + torch.__version__)
try:
    from attnbench_plugins.psal_build import CUDA_VARIANTS, DEFAULT_CUDA_VARIANT
except Exception as exc:  # not installed: only the default variant is checked
    print("VARIANTS=")
else:
    print("VARIANTS=" + ";".join(f"{n}:{' '.join(f)}" for n, f in CUDA_VARIANTS.items() if n != DEFAULT_CUDA_VARIANT))
EOF
)" || fail "could not read torch's build flags with $PY"

STD="$(sed -n 's/^STD=//p' <<<"$FLAGS_OUT")"
ABI="$(sed -n 's/^ABI=//p' <<<"$FLAGS_OUT")"
INCS="$(sed -n 's/^INCS=//p' <<<"$FLAGS_OUT")"
NVCCCOMMON="$(sed -n 's/^NVCCCOMMON=//p' <<<"$FLAGS_OUT")"
NOMACROS="$(sed -n 's/^NOMACROS=//p' <<<"$FLAGS_OUT")"
TORCHVER="$(sed -n 's/^TORCHVER=//p' <<<"$FLAGS_OUT")"
VARIANTS="$(sed -n 's/^VARIANTS=//p' <<<"$FLAGS_OUT")"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/psal_cuda_check.XXXXXX")" || fail "mktemp failed"
if [ "${KEEP_OBJ:-0}" != "1" ]; then trap 'rm -rf "$TMP"' EXIT; else echo "compile_cuda: keeping $TMP"; fi

DEFS=(-DTORCH_EXTENSION_NAME=attnbench_psal_native -DTORCH_API_INCLUDE_EXTENSION_H
      "-D_GLIBCXX_USE_CXX11_ABI=$ABI" -DWITH_CUDA)
if [ "$NOMACROS" = "1" ]; then
  DEFS+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE)
  echo "compile_cuda: note: c10/cuda/impl/cuda_cmake_macros.h not shipped (CPU torch wheel); using -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"
fi
GENCODE=()
for a in $ARCHS; do GENCODE+=("-gencode=arch=compute_${a},code=sm_${a}"); done

eval "INC_ARR=($INCS)"
eval "NVCC_ARR=($NVCCCOMMON)"

echo "compile_cuda: torch $TORCHVER, $("$NVCC" --version | tail -1), archs: $ARCHS"
NVCC_ARGS=("${INC_ARR[@]}" "-I$ROOT/native" "${DEFS[@]}" "${NVCC_ARR[@]}"
     "${GENCODE[@]}" --compiler-options -fPIC "$STD" -O3 -lineinfo -Xptxas=-warn-spills
     -diag-suppress=3306)
CMD=("$NVCC" -c "$CU" -o "$TMP/psal_cuda.o" "${NVCC_ARGS[@]}")
echo "compile_cuda: ${CMD[*]}"
start=$SECONDS
"${CMD[@]}" 2>"$TMP/nvcc.log"
rc=$?
# Show our own diagnostics (torch's headers produce known, harmless warnings we filter out);
# ptxas spill warnings are summarised (the search heaps live in local memory by design).
grep -v -e '^$' -e 'ptxas' "$TMP/nvcc.log" | grep -e 'psal' -e 'error' | head -80 >&2
nspill="$(grep -c 'Registers are spilled' "$TMP/nvcc.log")"
[ "$nspill" = "0" ] || echo "compile_cuda: note: ptxas reports register spills in $nspill kernel instantiations (KEEP_OBJ=1 keeps $TMP/nvcc.log)"
[ $rc -eq 0 ] || { tail -40 "$TMP/nvcc.log" >&2; fail "nvcc failed on native/psal_cuda.cu (rc=$rc)"; }
echo "compile_cuda: OK native/psal_cuda.cu -> psal_cuda.o ($((SECONDS - start)) s)"

if [ -f "$CPP" ]; then
  CMD2=("$HOSTCXX" -c "$CPP" -o "$TMP/psal_cpu.o" "${INC_ARR[@]}" "-I$ROOT/native" "${DEFS[@]}"
        -fPIC "$STD" -O1 -w)
  echo "compile_cuda: ${CMD2[*]}"
  "${CMD2[@]}" 2>"$TMP/cxx.log" || { tail -40 "$TMP/cxx.log" >&2; fail "host compiler failed on native/psal_cpu.cpp with -DWITH_CUDA"; }
  echo "compile_cuda: OK native/psal_cpu.cpp -DWITH_CUDA -> psal_cpu.o"
  # Every *_cuda symbol psal_cpu.o needs must be defined by psal_cuda.o (same mangled name =
  # same namespace, name and parameter types).
  mapfile -t NEED < <(nm --undefined-only "$TMP/psal_cpu.o" | awk '{print $2}' | while read -r s; do
      d="$(c++filt "$s")"; case "$d" in *_cuda\(*) echo "$s";; esac; done)
  declare -A HAVE=()
  while read -r s; do HAVE["$s"]=1; done < <(nm --defined-only "$TMP/psal_cuda.o" | awk '$2 == "T" {print $3}')
  if [ ${#NEED[@]} -eq 0 ]; then
    fail "psal_cpu.cpp with -DWITH_CUDA references no *_cuda function: the CUDA kernels would never be registered"
  fi
  missing=0
  for s in "${NEED[@]}"; do
    if [ -n "${HAVE[$s]:-}" ]; then
      echo "compile_cuda: OK symbol $(c++filt "$s")"
    else
      echo "compile_cuda: MISSING in psal_cuda.o: $(c++filt "$s")" >&2; missing=1
    fi
  done
  [ $missing -eq 0 ] || fail "psal_cuda.cu does not define every *_cuda function psal_cpu.cpp binds (see native/psal.h)"
else
  echo "compile_cuda: note: native/psal_cpu.cpp not present; skipped the combined -DWITH_CUDA check"
fi

# 4. the other costing variants (each a full device compile: register/shared-memory errors show)
[ -n "$VARIANTS" ] || echo "compile_cuda: note: attnbench_plugins not importable with $PY; only the default variant compiled"
IFS=';' read -r -a VARIANT_SPECS <<<"$VARIANTS"
for spec in "${VARIANT_SPECS[@]}"; do
  [ -n "$spec" ] || continue
  vname="${spec%%:*}"; read -r -a vflags <<<"${spec#*:}"
  if [ -n "${PSAL_CUDA_VARIANT_LIST:-}" ] && [[ " $PSAL_CUDA_VARIANT_LIST " != *" $vname "* ]]; then continue; fi
  start=$SECONDS
  "$NVCC" -c "$CU" -o "$TMP/psal_cuda_$vname.o" "${NVCC_ARGS[@]}" "${vflags[@]}" 2>"$TMP/nvcc_$vname.log" || {
    tail -40 "$TMP/nvcc_$vname.log" >&2; fail "nvcc failed on native/psal_cuda.cu, variant $vname (${vflags[*]})"; }
  nspill="$(grep -c 'Registers are spilled' "$TMP/nvcc_$vname.log")"
  note=""; [ "$nspill" = "0" ] || note=", ptxas reports spills in $nspill kernel instantiations"
  echo "compile_cuda: OK variant $vname (${vflags[*]}) ($((SECONDS - start)) s$note)"
done
echo "compile_cuda: PASS"
