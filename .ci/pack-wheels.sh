#!/usr/bin/env bash
# Pack what a GPU machine without network lacks: pure-Python wheels in .whl/ (never committed).
#
# The device has its own torch (and its CUDA build) but no network, so attnbench is installed
# there with --no-deps (.ci/gpu-session.sh) and the baselines' pure-Python dependencies travel
# as wheels: performer-pytorch, reformer-pytorch, linear-attention-transformer and everything
# they and the harness need that is pure Python (einops, local-attention, rich, tabulate, ...),
# at the versions installed in this venv (so the device runs what the CPU tables ran). The list is
# the requirement closure read from this venv's installed metadata, without torch; a package
# that only exists as a platform wheel (numpy, pandas, scipy, faiss-cpu, ...) is left out and
# named: the device's Python must already have it (torch's images ship numpy; the others
# only matter for the task suites and peers, not for the GPU table).
#
# Usage: PYTHON=.venv/bin/python bash .ci/pack-wheels.sh      then carry ".whl" in the device call
# Environment: PYTHON (default python3), ROOTS (requirement roots, default below).
set -euo pipefail
PY=${PYTHON:-python3}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
ROOTS=${ROOTS:-"performer-pytorch reformer-pytorch linear-attention-transformer rich tabulate pytest-timeout pytest-benchmark"}
mkdir -p "$DEST"

# name==version of the roots and their requirements (this venv's metadata), torch excluded
mapfile -t PINS < <("$PY" - $ROOTS <<'EOF'
import re
import sys
from importlib import metadata

SKIP = {"torch", "triton", "nvidia"}
seen, todo = {}, list(sys.argv[1:])
while todo:
    name = re.split(r"[ ;<>=!~\[(]", todo.pop().strip(), maxsplit=1)[0].lower().replace("_", "-")
    if not name or name in seen or name in SKIP or name.startswith("nvidia-"):
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        print(f"note: {name} is not installed here; not packed", file=sys.stderr)
        continue
    seen[name] = dist.version
    todo += [r for r in (dist.requires or []) if "extra ==" not in r]
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
EOF
)
echo "pack-wheels: ${#PINS[@]} packages: ${PINS[*]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "${PINS[@]}"
# keep pure-Python wheels only (the device's interpreter may differ from this one)
for whl in "$DEST"/*.whl; do
  case "$(basename "$whl")" in
    *-none-any.whl) ;;
    *) echo "pack-wheels: not pure Python, left out (the device must have it): $(basename "$whl")"; rm -f "$whl" ;;
  esac
done
echo "pack-wheels: $(ls "$DEST"/*.whl | wc -l) wheels in .whl/ ($(du -sh "$DEST" | cut -f1)); carry \".whl\" in the device call"
