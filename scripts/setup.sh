#!/usr/bin/env bash
# Create .venv in the repository root and install geolrm into it (idempotent).
#   scripts/setup.sh          runtime + test tools
# On a machine without a CUDA GPU the CPU build of torch is installed first, so pip never
# pulls the multi-GB CUDA wheels; with a GPU, the normal torch wheel plus gsplat.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "geolrm needs Python 3.10+"'
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q)

if nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
else
  gpu=0
fi

if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  if [ "$gpu" = 1 ]; then
    "${PIP[@]}" install torch
  else
    # A local CPU wheel when pip knows one (find-links; its dependencies then come from the
    # usual index), else PyTorch's CPU index.
    if "${PIP[@]}" install --no-index --no-deps torch==2.13.0 2>/dev/null; then
      "${PIP[@]}" install torch==2.13.0
    else
      "${PIP[@]}" install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi

extras="test"
[ "$gpu" = 1 ] && extras="test,cuda"
"${PIP[@]}" install -e ".[${extras}]"
echo "geolrm is installed in .venv (torch: $(.venv/bin/python -c 'import torch; print(torch.__version__)'))" >&2

# Compile the numba kernels (rasteriser, optimiser, TSDF, texture, GeoLRM sampling) into numba's
# on-disk cache now, so the first real command does not pay for it; never fails the set-up.
echo "compiling the numba kernels into their cache (python -m pipelines.warmup; ~1 min on 2 cores)" >&2
if ! .venv/bin/python -m pipelines.warmup; then
  echo "note: the numba warm-up did not complete; those kernels compile on first use instead" >&2
fi
