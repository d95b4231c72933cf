#!/usr/bin/env bash
# Create the virtualenv (default .venv) and install twm-suite with its test tools. Idempotent.
# torch: the CPU build (2.13.0) unless a torch is already installed there, e.g. a CUDA build
# installed first by a GPU user (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ ! -f "$VENV/.twm-installed" ] || [ pyproject.toml -nt "$VENV/.twm-installed" ]; then
    python -m pip install -q --upgrade pip
    python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
    python -m pip install -q -e ".[dev]"
    touch "$VENV/.twm-installed"
fi
echo "twm-suite installed in $VENV ($(python -c 'import torch; print("torch", torch.__version__)'))"
