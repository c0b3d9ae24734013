"""The NEON kernel, built for aarch64 and run under qemu-user against the float64 reference.

The suite's other kernel tests run only the kernels of the CPU at hand, and the machines that
run it are x86. This builds tests/neon_harness.cpp with the core's rotation sources using
aarch64-linux-gnu-g++ (Debian: g++-aarch64-linux-gnu) and runs it with qemu-aarch64 (Debian:
qemu-user); without them it skips, unless PYNTK_TEST_NEON=1 (set by .ci/run), which makes a
missing tool a failure.
"""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pyntk import RopeScaling, rope
from test_rotate import SCALINGS, assert_rotated

ROOT = Path(__file__).resolve().parent.parent
COMPILER, EMULATOR = "aarch64-linux-gnu-g++", "qemu-aarch64"
MODES = {"normal": 0, "neox": 2}


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    missing = [tool for tool in (COMPILER, EMULATOR) if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)"
        if os.environ.get("PYNTK_TEST_NEON") == "1":
            pytest.fail(message)
        pytest.skip(message)
    binary = tmp_path_factory.mktemp("neon") / "neon_harness"
    sources = [ROOT / "tests" / "neon_harness.cpp"] + [
        ROOT / "csrc" / name for name in ("rotate.cpp", "rotate_neon.cpp", "cpu.cpp")]
    subprocess.run([COMPILER, "-std=c++17", "-O2", "-static", "-pthread", "-Wall", "-Werror",
                    "-DPYNTK_NEON_KERNEL=1", f"-I{ROOT / 'csrc'}", *map(str, sources),
                    "-o", str(binary)], check=True)
    return binary


def neon_rotate(harness: Path, tmp_path: Path, x, positions, scaling, mode, threads,
                seq_len=None):
    """(into a separate buffer, in place) as the NEON kernel computes them."""
    inv, attention = rope.inv_freq(scaling, seq_len)
    tokens, heads, head_dim = x.shape
    header = np.array([tokens, heads, head_dim, len(inv), MODES[mode],
                       int(x.dtype == np.float16), threads], "<i8")
    job, out = tmp_path / "job", tmp_path / "out"
    job.write_bytes(header.tobytes() + np.array([attention], "<f8").tobytes()
                    + np.asarray(positions, "<i8").tobytes() + np.asarray(inv, "<f8").tobytes()
                    + np.ascontiguousarray(x).tobytes())
    subprocess.run([EMULATOR, str(harness), str(job), str(out)], check=True, timeout=120)
    both = np.frombuffer(out.read_bytes(), x.dtype).reshape((2,) + x.shape)
    return both[0], both[1]


# Head sizes that leave NEON's 4-pair vectors a tail, rotary dims short of the head, odd
# head counts; every method.
CASES = [((7, 3, 64), 64), ((5, 5, 80), 80), ((6, 3, 96), 96), ((4, 2, 128), 128),
         ((3, 1, 256), 256), ((9, 3, 128), 72), ((4, 2, 64), 6)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["neox", "normal"])
@pytest.mark.parametrize("shape, dims", CASES)
def test_neon_kernel_against_reference(harness, tmp_path, dtype, mode, shape, dims):
    rng = np.random.default_rng(sum(shape) + dims)
    x = rng.standard_normal(shape).astype(dtype)
    positions = rng.integers(0, 2**20 + 1, shape[0])
    for i, base in enumerate(SCALINGS):
        scaling = base.replace(dims=dims)
        seq_len = int(positions.max()) + 1 if scaling.method == "dynamic" else None
        out, in_place = neon_rotate(harness, tmp_path, x, positions, scaling, mode, 1 + i % 3,
                                    seq_len)
        np.testing.assert_array_equal(out, in_place)
        assert_rotated(out, x, positions, scaling, mode, seq_len)


def test_neon_harness_rejects_a_wrong_result(harness, tmp_path):
    # The comparison above must be able to fail: the reference of other positions differs.
    x = np.random.default_rng(1).standard_normal((5, 2, 64)).astype(np.float32)
    scaling = RopeScaling(dims=64)
    out, _ = neon_rotate(harness, tmp_path, x, np.arange(5) + 1000, scaling, "neox", 1)
    with pytest.raises(AssertionError):
        assert_rotated(out, x, np.arange(5) + 1001, scaling, "neox")
