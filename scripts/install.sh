#!/usr/bin/env bash
# Install helios-serve (editable, from this checkout) into the current Python environment.
#
#   scripts/install.sh            the package
#   scripts/install.sh test       plus the test dependencies (diffusers, transformers, pytest, ...)
#
# torch: an installed torch is kept (a GPU machine keeps its CUDA build). On a machine with
# no torch and no NVIDIA GPU the CPU wheel torch==2.13.0 is installed first, because an
# unpinned torch would pull a CUDA build of several GB. Set TORCH_INDEX_URL to PyTorch's CPU
# wheel index where plain PyPI would serve a CUDA build for that pin.
set -euo pipefail

PYTHON=${PYTHON:-python3}
EXTRAS=${1:-}
cd "$(dirname "$0")/.."

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "install.sh: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
    echo "install.sh: NVIDIA GPU found; pip will choose a CUDA build of torch"
else
    echo "install.sh: no GPU and no torch; installing the CPU build torch==2.13.0"
    "$PYTHON" -m pip install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

"$PYTHON" -m pip install -e ".${EXTRAS:+[$EXTRAS]}"
