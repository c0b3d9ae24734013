#!/usr/bin/env bash
# Build the C++ core with AddressSanitizer and UndefinedBehaviorSanitizer and run the core's
# tests (frequencies, kernels, the Python-facing fuzz) against that build.
#
# It uses a venv of its own without system site-packages: the editable install's import hook
# would otherwise load the ordinary build. Usage: tools/sanitize.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${PYNTK_SANITIZE_VENV:-$ROOT/build/sanitize-venv}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check --quiet "$@"; }
pip install numpy pytest hypothesis gguf tqdm
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
pip install --force-reinstall --no-deps . -C build-dir=build/sanitize \
    -C cmake.build-type=RelWithDebInfo \
    -C "cmake.define.CMAKE_CXX_FLAGS=$SAN" \
    -C "cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined"

# Python itself is not instrumented, so the ASan runtime must be loaded first, and libstdc++
# with it so that ASan can intercept C++ exceptions (pybind11 turns them into Python errors).
export LD_PRELOAD
LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:check_initialization_order=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
tests=(tests/test_scaling.py tests/test_freqs.py)
for t in tests/test_rotate.py tests/test_fuzz_core.py tests/test_core_safety.py; do [ -f "$t" ] && tests+=("$t"); done
# -P: do not put the source tree first on sys.path; import the sanitized build.
"$VENV/bin/python" -P -c "import pyntk._core as c, sys; print('sanitized core:', c.__file__, file=sys.stderr)"
exec "$VENV/bin/python" -P -m pytest -p no:cacheprovider -q "${tests[@]}" "$@"
