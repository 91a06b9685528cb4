#!/usr/bin/env bash
# Build geolrm's wheel, install it (not editable) into a fresh virtual environment outside the
# checkout, and run the CLI from a folder outside the checkout: `geolrm --help`,
# `geolrm weights list` and the README's tiny-model reconstruction (model.ply must be written).
# Exits non-zero if any step fails. Needs .venv (scripts/setup.sh) for the build tools.
#   scripts/check_wheel.sh            (KEEP=1 keeps the temporary folder and prints its path)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
start=$SECONDS

tmp=$(mktemp -d)
if [ "${KEEP:-0}" = 1 ]; then
  trap 'echo "check_wheel: kept $tmp" >&2' EXIT
else
  # Deleting the ~2 GB, ~30k-file environment takes 1-2 min on a slow disk: done in the background.
  trap 'nohup rm -rf "$tmp" >/dev/null 2>&1 &' EXIT
fi
step() { echo "check_wheel: $* ($((SECONDS - start)) s)" >&2; }

# 1. Build from a copy of what the wheel is made of, so a stale build/ or egg-info in the
#    checkout can neither leak into the wheel nor be left behind.
step "building the wheel"
mkdir -p "$tmp/src"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
  -cf - pyproject.toml README.md geolrm_cli pipelines | tar -C "$tmp/src" -xf -
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation "$tmp/src" -w "$tmp/dist"
wheel=$(ls "$tmp"/dist/geolrm-*.whl)
.venv/bin/python - "$wheel" <<'EOF'
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = {
    "pipelines/weights.toml",
    "pipelines/viewer/splat_page.html",
    "pipelines/__init__.py",
    "geolrm_cli/app.py",
}
missing = sorted(need - names)
if missing:
    sys.exit(f"check_wheel: the wheel lacks {', '.join(missing)}")
EOF

# 2. A fresh environment: the CPU torch first (never the multi-GB CUDA wheels), as setup.sh does.
step "installing torch (CPU) into a fresh venv"
"$PYTHON" -m venv "$tmp/venv"
# --no-compile: no .pyc for the ~20k files (faster to install and to delete); pip's output goes to
# a log that is shown only when pip fails.
PIP=("$tmp/venv/bin/python" -m pip -q --no-input install --no-compile)
pip_log() { "${PIP[@]}" "$@" >"$tmp/pip.log" 2>&1 || { cat "$tmp/pip.log" >&2; return 1; }; }
if ! "${PIP[@]}" --no-index --no-deps torch==2.13.0 >/dev/null 2>&1; then
  pip_log torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi

# 3. The wheel itself, not editable; torch's and the wheel's other dependencies come from the
#    usual index (torch is already there, so the CPU build stays).
step "installing $(basename "$wheel") and its dependencies"
pip_log torch==2.13.0 "$wheel"

# 4. Run from a folder outside the checkout, so nothing is imported from it.
step "running the CLI outside the checkout"
mkdir -p "$tmp/run"
cd "$tmp/run"
export HF_HUB_OFFLINE=1
unset GEOLRM_WEIGHTS_REGISTRY
geolrm=$tmp/venv/bin/geolrm
"$tmp/venv/bin/python" - "$ROOT" <<'EOF'
import sys
from pathlib import Path

import pipelines
import pipelines.weights as w

root = Path(sys.argv[1]).resolve()
import torch

for p in (Path(pipelines.__file__), w.registry_path()):
    if root in p.resolve().parents:
        sys.exit(f"check_wheel: {p} comes from the checkout, not the installed wheel")
print(f"check_wheel: pipelines from {Path(pipelines.__file__).parent}, torch {torch.__version__}")
EOF
"$geolrm" --help >/dev/null
"$geolrm" weights list >"$tmp/weights_list.txt"
grep -q '^ *geolrm ' "$tmp/weights_list.txt" || grep -q geolrm "$tmp/weights_list.txt"
tiny=$ROOT/tests/fixtures/geolrm_tiny
"$geolrm" recon "$tiny/tiny_views" --size 112 \
  --checkpoint "$tiny/geolrm_tiny_weights.safetensors" \
  --config "$ROOT/examples/tiny/geolrm_tiny_config.json" -o "$tmp/out/tiny" --no-video
test -s "$tmp/out/tiny/model.ply" || { echo "check_wheel: no model.ply written" >&2; exit 1; }
# numba caches next to the installed modules (GeoLRM's CPU sampling kernel ran just now)
site=$("$tmp/venv/bin/python" -c 'import pathlib, pipelines; print(pathlib.Path(pipelines.__file__).parent)')
find "$site" -name '*.nbi' | grep -q . || { echo "check_wheel: numba cached nothing in $site" >&2; exit 1; }
step "ok: the wheel installs and runs outside the checkout"
