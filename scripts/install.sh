#!/usr/bin/env bash
# Install helios-serve (editable, from this checkout) into the current Python environment.
#
#   scripts/install.sh            the package
#   scripts/install.sh test       plus the test dependencies (pytest, Playwright, Ray, ...) and,
#                                 when missing, Debian's chromium (browser tests), ffmpeg (the
#                                 HLS example), postgresql (the job-store tests) and prometheus
#                                 (promtool checks the deployment's config), with apt-get
#
# Versions: the exact ones CI tests (.ci/constraints-core.txt), so your environment is the
# tested one. HELIOS_UNPINNED=1 installs setup.py's ranges instead.
#
# torch: an installed torch is kept (a GPU machine keeps its CUDA build), and then the pins of
# torch and triton are left out. On a machine with no torch and no NVIDIA GPU the pinned CPU
# wheel torch==2.13.0 is installed first, because an unpinned torch would pull a CUDA build of
# several GB. Set TORCH_INDEX_URL to PyTorch's CPU wheel index where plain PyPI would serve a
# CUDA build for that pin.
set -euo pipefail

PYTHON=${PYTHON:-python3}
EXTRAS=${1:-}
cd "$(dirname "$0")/.."
PINS=.ci/constraints-core.txt
TORCH_PIN=$(grep -E '^torch==' "$PINS" | cut -d= -f3)

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "install.sh: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
    grep -vE '^(torch|triton)==' "$PINS" >"$constraints"
elif command -v nvidia-smi >/dev/null 2>&1; then
    echo "install.sh: NVIDIA GPU found; pip will choose a CUDA build of torch"
    grep -vE '^(torch|triton)==' "$PINS" >"$constraints"
else
    echo "install.sh: no GPU and no torch; installing the CPU build torch==$TORCH_PIN"
    "$PYTHON" -m pip install "torch==$TORCH_PIN" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    cp "$PINS" "$constraints"
fi

if [ -n "${HELIOS_UNPINNED:-}" ]; then
    "$PYTHON" -m pip install -e ".${EXTRAS:+[$EXTRAS]}"
else
    "$PYTHON" -m pip install -c "$constraints" -e ".${EXTRAS:+[$EXTRAS]}"
fi

if [ "$EXTRAS" = "test" ]; then
    missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    # The job-store tests start a PostgreSQL server (Debian keeps its programs off PATH).
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 \
        || missing+=(postgresql)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # checks deploy/prometheus
    if [ ${#missing[@]} -gt 0 ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "install.sh: the tests need ${missing[*]}; install them with your package manager" >&2
            exit 1
        fi
        echo "install.sh: installing ${missing[*]} with apt-get (browser tests, HLS example)"
        sudo=""
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi
