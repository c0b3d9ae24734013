#!/usr/bin/env bash
# Set up this checkout on a fresh machine: system packages, Python packages (llama-cpp-python is
# built from source, about 5 minutes on 2 cores, once: pip's wheel cache serves later installs),
# pyntk itself (editable, with its C++ core), and the real test model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v git >/dev/null || missing+=(git)
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

pip() { "$PY" -m pip --disable-pip-version-check "$@"; }
pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake
# The CPU build of torch (for the transformers cross-checks); an unpinned torch would pull CUDA.
"$PY" -c "import torch" 2>/dev/null || pip install --quiet "torch==2.13.0"
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
    echo "setup: building llama-cpp-python from source (about 5 minutes on 2 cores)" >&2
fi
pip install --quiet -e ".[llama,plot,test]"
"$PY" tools/fetch_model.py >/dev/null
echo "setup: done ($("$PY" -m pyntk.cli --version), test model in .cache/)" >&2
