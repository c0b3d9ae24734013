"""pyntk.rotate and pyntk.cos_sin against the float64 reference, on every kernel this CPU runs."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pyntk
from pyntk import reference, rope
from pyntk.scaling import RopeScaling


# Allowed error of a rotated value, relative to its pair's length times the attention
# factor (the scale the value can reach), plus an absolute floor. float32: a handful of
# roundings of 6e-8 each. float16: the output's own rounding (2^-11) dominates; the floor is
# half of float16's subnormal spacing.
TOLERANCE = {
    np.dtype(np.float32): (2e-6, 0.0),
    np.dtype(np.float16): (1e-3, 2.0**-25),
}

KERNELS = rope.kernels()

# One of each method, with parameters that change the angles.
SCALINGS = [
    RopeScaling(),
    RopeScaling("linear", factor=4),
    RopeScaling("ntk", alpha=8),
    RopeScaling("dynamic", factor=4, original_context=512),
    RopeScaling("ntk-by-parts", factor=8, original_context=2048),
    RopeScaling("yarn", factor=16, original_context=4096, attn_factor=1.1),
    RopeScaling("llama3", factor=8, original_context=8192),
]

# (tokens, heads, head_dim, n_rot): head counts and widths that leave remainders for 4-, 8-
# and 16-lane vectors, n_rot below head_dim, and a single pair.
SHAPES = [
    (1, 1, 64, 64),
    (2, 3, 80, 80),
    (3, 7, 96, 96),
    (7, 15, 128, 128),
    (2, 16, 256, 256),
    (4, 17, 128, 64),
    (3, 31, 80, 32),
    (2, 33, 96, 20),
    (3, 2, 66, 66),
    (5, 63, 64, 2),
    (2, 65, 34, 34),
]


def _pairs(a, d, mode):
    """The two members of every rotated pair of a[..., :d]."""
    if mode == "neox":
        return a[..., : d // 2], a[..., d // 2 : d]
    return a[..., 0:d:2], a[..., 1:d:2]


def assert_rotated(got, x, positions, scaling, mode, seq_len=None, tolerance=None):
    """got must be reference.rotate(x) within TOLERANCE, and exactly x past the rotary dims."""
    d = scaling.dims
    ref = reference.rotate(x, positions, scaling, mode, seq_len)
    _, attention = reference.inv_freq(scaling)
    relative, floor = tolerance or TOLERANCE[got.dtype]
    x0, x1 = _pairs(x.astype(np.float64), d, mode)
    scale = np.hypot(x0, x1) * attention
    e0, e1 = _pairs(np.abs(got.astype(np.float64) - ref), d, mode)
    excess = np.maximum(e0, e1) - (relative * scale + floor)
    if excess.size and excess.max() > 0:
        where = np.unravel_index(np.argmax(excess), excess.shape)
        worst = (np.maximum(e0, e1) / np.maximum(scale, 1e-30))[where]
        raise AssertionError(
            f"{scaling.method} {mode} {got.dtype}: pair {where} off by {worst:.3g} of its "
            f"length, tolerance {relative:g}"
        )
    np.testing.assert_array_equal(got[..., d:], x[..., d:])


def _inputs(rng, shape, dtype, high=2**20 + 1):
    tokens, heads, head_dim = shape
    x = rng.standard_normal(shape).astype(dtype)
    positions = rng.integers(0, high, tokens)
    return x, positions


# ---- against the reference ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["neox", "normal"])
@pytest.mark.parametrize("tokens,heads,head_dim,n_rot", SHAPES)
def test_matches_reference(kernel, rng, mode, dtype, tokens, heads, head_dim, n_rot):
    x, positions = _inputs(rng, (tokens, heads, head_dim), dtype)
    for scaling in SCALINGS:
        if n_rot < 4 and scaling.method in ("ntk", "dynamic"):
            continue  # their base exponent d/(d-2) needs two pairs
        scaling = scaling.replace(dims=n_rot)
        out = np.empty_like(x)
        assert pyntk.rotate(x, positions, scaling, mode=mode, out=out) is out
        assert_rotated(out, x, positions, scaling, mode)


@pytest.mark.parametrize("mode", ["neox", "normal"])
def test_large_positions_stay_accurate(kernel, rng, mode):
    # llama.cpp's float32 angles are off by ~0.2 here; ours must stay at float32 rounding.
    positions = np.array([0, 1, 8191, 8192, 65535, 65536, 2**20 - 1, 2**20, 2**24 + 1,
                          2**31 - 1])
    x = rng.standard_normal((len(positions), 5, 128)).astype(np.float32)
    for scaling in (SCALINGS[0], SCALINGS[5]):
        assert_rotated(pyntk.rotate(x.copy(), positions, scaling, mode=mode), x, positions,
                       scaling, mode)


def test_cos_sin_matches_reference(kernel, rng):
    positions = np.concatenate([np.arange(20), rng.integers(0, 2**31, 50)])
    for scaling in SCALINGS:
        for dims in (2, 18, 64, 128):
            if dims < 4 and scaling.method in ("ntk", "dynamic"):
                continue
            s = scaling.replace(dims=dims)
            cos, sin = pyntk.cos_sin(positions, s)
            ref_cos, ref_sin = reference.cos_sin(s, positions)
            _, attention = reference.inv_freq(s)
            assert cos.dtype == sin.dtype == np.float32
            assert cos.shape == sin.shape == (len(positions), dims // 2)
            np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=2e-6 * attention)
            np.testing.assert_allclose(sin, ref_sin, rtol=0, atol=2e-6 * attention)


@pytest.mark.parametrize("mode", ["neox", "normal"])
def test_batch_axis(kernel, rng, mode):
    x = rng.standard_normal((3, 5, 7, 64)).astype(np.float32)
    scaling = SCALINGS[5].replace(dims=48)
    shared = rng.integers(0, 5000, 5)
    assert_rotated(pyntk.rotate(x.copy(), shared, scaling, mode=mode), x, shared, scaling, mode)
    own = rng.integers(0, 5000, (3, 5))
    assert_rotated(pyntk.rotate(x.copy(), own, scaling, mode=mode), x, own, scaling, mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_strided_views(kernel, rng, dtype):
    base = rng.standard_normal((9, 6, 5, 2, 80)).astype(dtype)
    x = base[::-2, 1::2, ::-1, 1]  # every axis but the last strided, two of them backwards
    positions = rng.integers(0, 70000, (5, 3))  # x is [5, 3, 5, 80]: per batch, per token
    scaling = SCALINGS[2].replace(dims=64)
    out_base = np.zeros((5, 4, 5, 3, 80), dtype)
    out = out_base[:, 1:, :, 2]
    before = x.copy()
    for mode in ("neox", "normal"):
        pyntk.rotate(x, positions, scaling, mode=mode, out=out)
        np.testing.assert_array_equal(x, before)
        assert_rotated(out, x, positions, scaling, mode)
    assert not out_base[:, 0].any() and not out_base[..., :2, :].any()  # nothing else written
    pyntk.rotate(x, positions, scaling, mode="normal")
    np.testing.assert_array_equal(x, out)


def test_in_place_equals_out_and_copies_the_rest(kernel, rng):
    x = rng.standard_normal((6, 9, 96)).astype(np.float32)
    positions = rng.integers(0, 10**6, 6)
    scaling = SCALINGS[1].replace(dims=64)
    out = np.full_like(x, np.nan)
    pyntk.rotate(x, positions, scaling, out=out)
    in_place = x.copy()
    assert pyntk.rotate(in_place, positions, scaling) is in_place
    np.testing.assert_array_equal(out, in_place)
    np.testing.assert_array_equal(out[..., 64:], x[..., 64:])
    same = x.copy()
    pyntk.rotate(same, positions, scaling, out=same)  # out=x is in place too
    np.testing.assert_array_equal(same, in_place)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_threads_give_identical_results(kernel, rng, dtype):
    x, positions = _inputs(rng, (37, 8, 128), dtype)
    results = [pyntk.rotate(x, positions, SCALINGS[5], out=np.empty_like(x), threads=t)
               for t in (None, 1, 2, 3, 37, 256)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_python_runs_during_a_rotation(rng):
    # The core releases the GIL: another Python thread keeps reading the clock all through
    # one long call (the scalar kernel computes a sin/cos per pair: about 150 ms here), so no
    # gap between its readings comes near the call's length. Holding the GIL would leave one
    # gap of almost the whole call.
    x = rng.standard_normal((65536, 1, 256)).astype(np.float32)
    scaling = RopeScaling("yarn", dims=256, factor=16, original_context=4096)
    readings, stop = [], threading.Event()

    def read_the_clock():
        while not stop.is_set():
            readings.append(time.perf_counter())

    worker = threading.Thread(target=read_the_clock)
    with rope.use_kernel("scalar"):
        worker.start()
        try:
            time.sleep(0.02)
            start = time.perf_counter()
            pyntk.rotate(x, np.arange(len(x)), scaling, threads=1)
            end = time.perf_counter()
        finally:
            stop.set()
            worker.join()
    during = [t for t in readings if start < t < end]
    assert np.diff([start, *during, end]).max() < (end - start) / 2


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["neox", "normal"])
@pytest.mark.parametrize("heads, head_dim, dims", [(32, 128, 128), (9, 72, 64), (9, 80, 72)])
def test_large_outputs_written_around_the_cache(kernel, rng, dtype, mode, heads, head_dim, dims):
    # 16 MiB and more are written with non-temporal stores where the CPU has them: whole
    # 64-byte lines shifted onto line boundaries when the destination starts on 16 bytes
    # (0, 16 and 48 bytes into a line below), ordinary stores when it does not (one element
    # in) or when a row is not whole lines (72 rotary dims). Heads of 72 values start at
    # alternating shifts and leave 8 values to copy after the 64 rotated ones.
    scaling = RopeScaling(dims=dims)
    size = np.dtype(dtype).itemsize
    tokens = (16 << 20) // (heads * head_dim * size) + 1
    x, positions = _inputs(rng, (tokens, heads, head_dim), dtype)
    expected = pyntk.rotate(x.copy(), positions, scaling, mode=mode)  # in place: cached
    buffer = np.empty(x.size + 128, dtype)
    start = 64 // size + (-buffer.ctypes.data % 64) // size
    for offset in (start, start + 16 // size, start + 48 // size, start + 1):
        buffer[:] = 7  # nothing outside `out` may be written
        out = buffer[offset : offset + x.size].reshape(x.shape)
        pyntk.rotate(x, positions, scaling, mode=mode, out=out, threads=2)
        np.testing.assert_array_equal(out, expected)
        assert (buffer[:offset] == 7).all() and (buffer[offset + x.size :] == 7).all()
    some = slice(0, tokens, 97)
    assert_rotated(expected[some], x[some], positions[some], scaling, mode)


@pytest.mark.parametrize("shape", [(0, 4, 64), (5, 0, 64), (0, 5, 4, 64), (2, 0, 0, 64)])
def test_zero_sized(kernel, shape):
    x = np.zeros(shape, np.float32)
    positions = np.zeros(shape[-3], np.int64)
    assert pyntk.rotate(x, positions, RopeScaling(dims=64)) is x
    assert pyntk.rotate(x, positions, RopeScaling(dims=64), out=np.empty_like(x)).shape == shape
    cos, sin = pyntk.cos_sin([], RopeScaling(dims=64))
    assert cos.shape == sin.shape == (0, 32)


def test_position_zero_is_the_identity(kernel, rng):
    x = rng.standard_normal((1, 3, 128)).astype(np.float32)
    for scaling in SCALINGS:
        if scaling.method != "yarn":
            np.testing.assert_array_equal(pyntk.rotate(x.copy(), [0], scaling), x)


def test_yarn_temperature_scales_every_pair(kernel, rng):
    x = rng.standard_normal((4, 2, 64)).astype(np.float32)
    scaling = RopeScaling("yarn", dims=64, factor=16, original_context=4096)
    m = 0.1 * np.log(16) + 1
    y = pyntk.rotate(x.copy(), [0, 5, 500, 50000], scaling)
    np.testing.assert_allclose(np.hypot(*_pairs(y, 64, "neox")),
                               m * np.hypot(*_pairs(x, 64, "neox")), rtol=2e-6)


def test_dynamic_ntk_follows_the_sequence_length(kernel, rng):
    scaling = SCALINGS[3]
    x = rng.standard_normal((3, 2, 128)).astype(np.float32)
    positions = np.array([10, 700, 2000])
    default = pyntk.rotate(x.copy(), positions, scaling)
    np.testing.assert_array_equal(default, pyntk.rotate(x.copy(), positions, scaling, seq_len=2001))
    assert_rotated(default, x, positions, scaling, "neox", seq_len=2001)
    short = pyntk.rotate(x.copy(), positions, scaling, seq_len=512)  # within L0: plain RoPE
    np.testing.assert_array_equal(short, pyntk.rotate(x.copy(), positions, RopeScaling()))
    assert not np.array_equal(short, default)


def test_n_rot_chooses_the_rotary_dims(kernel, rng):
    x = rng.standard_normal((3, 2, 128)).astype(np.float32)
    scaling = SCALINGS[5]
    np.testing.assert_array_equal(pyntk.rotate(x.copy(), [1, 2, 3], scaling, n_rot=64),
                                  pyntk.rotate(x.copy(), [1, 2, 3], scaling.replace(dims=64)))
    cos, _ = pyntk.cos_sin([1, 2], scaling, n_rot=32)
    assert cos.shape == (2, 16)


# ---- the tolerance catches real mistakes --------------------------------------------------


def _float32_accumulated_angles(scaling, positions):
    """llama.cpp's way: theta_i = p * theta_scale^i by repeated float32 multiplication."""
    theta_scale = np.float32(scaling.base) ** np.float32(-2.0 / scaling.dims)
    theta = positions.astype(np.float32)
    angles = []
    for _ in range(scaling.dims // 2):
        angles.append(theta)
        theta = theta * theta_scale
    return np.stack(angles, axis=-1)[:, None, :]


def _rotate_float32(x, cos, sin, mode="neox"):
    y = x.copy()
    x0, x1 = _pairs(x, x.shape[-1], mode)
    y0, y1 = _pairs(y, x.shape[-1], mode)
    y0[...], y1[...] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return y


def _exact_tables(scaling, positions):
    cos, sin = reference.cos_sin(scaling, positions)
    return cos[:, None, :].astype(np.float32), sin[:, None, :].astype(np.float32)


def test_tolerance_catches_float32_angle_accumulation(rng):
    scaling = RopeScaling(dims=128)
    positions = np.array([8192, 65536, 2**20])
    x = rng.standard_normal((3, 4, 128)).astype(np.float32)
    assert_rotated(_rotate_float32(x, *_exact_tables(scaling, positions)), x, positions,
                   scaling, "neox")
    angles = _float32_accumulated_angles(scaling, positions)
    with pytest.raises(AssertionError, match="off by"):
        assert_rotated(_rotate_float32(x, np.cos(angles), np.sin(angles)), x, positions,
                       scaling, "neox")


def test_tolerance_catches_a_wrong_sign_or_pairing(rng):
    scaling = RopeScaling(dims=64)
    positions = np.arange(1, 4)
    x = rng.standard_normal((3, 2, 64)).astype(np.float32)
    cos, sin = _exact_tables(scaling, positions)
    with pytest.raises(AssertionError, match="off by"):
        assert_rotated(_rotate_float32(x, cos, -sin), x, positions, scaling, "neox")
    with pytest.raises(AssertionError, match="off by"):
        assert_rotated(_rotate_float32(x, cos, sin, mode="normal"), x, positions, scaling, "neox")


# ---- kernels and their selection ---------------------------------------------------------


def test_kernel_report_and_selection():
    features = pyntk.cpu_features()
    assert features["kernels"] == KERNELS and KERNELS[-1] == "scalar"
    assert features["kernel"] in KERNELS
    assert {"avx2", "fma", "f16c", "avx512f", "neon"} <= set(features)
    if features["avx2"] and features["fma"] and features["f16c"]:
        assert "avx2" in KERNELS
    if features["avx512f"]:
        assert "avx512" in KERNELS
    with pytest.raises(ValueError, match="unknown kernel 'sse9'"):
        rope.set_kernel("sse9")
    before = rope.kernel()
    with pytest.raises(RuntimeError):
        with rope.use_kernel("scalar"):
            assert rope.kernel() == "scalar"
            raise RuntimeError
    assert rope.kernel() == before


def test_kernel_unavailable_here_is_refused():
    missing = [k for k in ("avx512", "avx2", "neon") if k not in KERNELS]
    for name in missing:
        with pytest.raises(ValueError, match=name):
            rope.set_kernel(name)


def _python(code, cwd, **env):
    # Run outside the source tree, so that the installed pyntk (with its _core) is imported.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=cwd, timeout=120)


@pytest.mark.parametrize("name", KERNELS)
def test_environment_variable_forces_a_kernel(name, tmp_path):
    run = _python("import pyntk; print(pyntk.cpu_features()['kernel'])", tmp_path,
                  PYNTK_KERNEL=name)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == name


def test_environment_variable_with_an_unknown_kernel_fails_loudly(tmp_path):
    run = _python("import pyntk.rope", tmp_path, PYNTK_KERNEL="sse9")  # the core loads on first use
    assert run.returncode != 0
    assert "PYNTK_KERNEL" in run.stderr and "sse9" in run.stderr


# ---- bad input raises, never crashes ------------------------------------------------------


def _bad_calls():
    x = np.zeros((4, 2, 64), np.float32)
    s = RopeScaling(dims=64)
    p = np.arange(4)
    ro = x.copy()
    ro.flags.writeable = False
    return [
        (lambda: pyntk.rotate(x[0], p, s), ValueError, "shaped"),
        (lambda: pyntk.rotate(x[None, None], p, s), ValueError, "shaped"),
        (lambda: pyntk.rotate(x.tolist(), p, s), TypeError, "numpy array"),
        (lambda: pyntk.rotate(x.astype(np.float64), p, s), TypeError, "float32 or float16"),
        (lambda: pyntk.rotate(x.astype(np.int32), p, s), TypeError, "float32 or float16"),
        (lambda: pyntk.rotate(x.astype(">f4"), p, s), TypeError, "byte order"),
        (lambda: pyntk.rotate(np.zeros((4, 64, 2), np.float32).transpose(0, 2, 1), p, s),
         ValueError, "contiguous"),
        (lambda: pyntk.rotate(x, p[:3], s), ValueError, "positions"),
        (lambda: pyntk.rotate(x, p.reshape(2, 2), s), ValueError, "positions"),
        (lambda: pyntk.rotate(x, p - 1, s), ValueError, "non-negative"),
        (lambda: pyntk.rotate(x, p.astype(np.float64), s), TypeError, "integers"),
        (lambda: pyntk.rotate(x, np.array([2**64 - 1] * 4, np.uint64), s), ValueError, "2\\^53"),
        (lambda: pyntk.rotate(x, [0, 1, 2, 2**70], s), ValueError, "2\\^53, got 118059"),
        (lambda: pyntk.rotate(x, [0, 1, 2, -2**70], s), ValueError, "got -118059"),
        (lambda: pyntk.rotate(x[:1], 0, s), ValueError, "one integer per token"),
        (lambda: pyntk.rotate(x, p, s, n_rot=63), ValueError, "even"),
        (lambda: pyntk.rotate(x, p, s, n_rot=0), ValueError, "even"),
        (lambda: pyntk.rotate(x, p, s, n_rot=66), ValueError, "head_dim"),
        (lambda: pyntk.rotate(x, p, s, n_rot=2.0), TypeError, "whole"),
        (lambda: pyntk.rotate(x, p, RopeScaling(dims=128)), ValueError, "head_dim"),
        (lambda: pyntk.rotate(x, p, s, out=np.zeros((4, 2, 63), np.float32)), ValueError, "shape"),
        (lambda: pyntk.rotate(x, p, s, out=np.zeros((4, 2, 64), np.float16)), ValueError, "dtype"),
        (lambda: pyntk.rotate(x, p, s, out=x[None]), ValueError, "shape"),
        (lambda: pyntk.rotate(x, p, s, out=[0.0]), TypeError, "numpy array"),
        (lambda: pyntk.rotate(x, p, s, out=x[::-1]), ValueError, "overlaps"),
        (lambda: pyntk.rotate(x, p, s, out=ro), ValueError, "read-only"),
        (lambda: pyntk.rotate(ro, p, s), ValueError, "read-only"),
        (lambda: pyntk.rotate(x, p, s, mode="gptj"), ValueError, "mode"),
        (lambda: pyntk.rotate(x, p, s, threads=0), ValueError, "threads"),
        (lambda: pyntk.rotate(x, p, s, threads=257), ValueError, "threads"),
        (lambda: pyntk.rotate(x, p, s, threads=2**70), ValueError, "from 1 to 256"),
        (lambda: pyntk.rotate(x, p, "yarn"), TypeError, "RopeScaling"),
        (lambda: pyntk.cos_sin(p.reshape(2, 2), s), ValueError, "one-dimensional"),
        (lambda: pyntk.cos_sin([-1], s), ValueError, "non-negative"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_raises(index):
    call, error, message = _bad_calls()[index]
    with pytest.raises(error, match=message):
        call()


def test_core_checks_its_own_arguments():
    x = np.zeros((2, 1, 8), np.float32)
    p = np.arange(2)
    inv = np.ones(4)
    mode = pyntk._core.RopeMode.neox
    for bad_inv in (np.ones(5), np.ones(0), np.ones(4, np.float32), np.array([1, np.nan, 1, 1.0])):
        with pytest.raises((TypeError, ValueError)):
            pyntk._core.rotate(x, p, bad_inv, 1.0, mode, None, 1)
    with pytest.raises(TypeError):
        pyntk._core.rotate(x, p.astype(np.int32), inv, 1.0, mode, None, 1)
    with pytest.raises(ValueError, match="attention"):
        pyntk._core.rotate(x, p, inv, float("inf"), mode, None, 1)
    unaligned = np.zeros(2 * 8 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(2, 1, 8)
    with pytest.raises(ValueError, match="aligned"):
        pyntk._core.rotate(unaligned, p, inv, 1.0, mode, None, 1)


FAULTS = [None] * 8 + ["ndim", "dtype", "last axis", "positions", "n_rot", "out", "mode"]


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_layouts_either_match_or_raise(data):
    # Random shapes and strides, half the calls with one thing wrong: a right call must
    # match the reference, a wrong one raise, and none may crash.
    draw = data.draw
    fault = draw(st.sampled_from(FAULTS))
    ndim = draw(st.sampled_from([1, 2, 5] if fault == "ndim" else [3, 4]))
    dims = draw(st.sampled_from([2, 4, 6, 18]))
    head_dim = dims + draw(st.sampled_from([0, 0, 2, 5]))
    shape = [draw(st.integers(0, 7)) for _ in range(ndim - 1)] + [head_dim]
    dtype = draw(st.sampled_from([">f4", "<f8", "<i4"] if fault == "dtype" else ["<f4", "<f2"]))
    steps = [draw(st.sampled_from([1, 2, -1])) for _ in range(ndim - 1)]
    steps.append(draw(st.sampled_from([2, -1])) if fault == "last axis" else 1)
    full = [n * abs(k) for n, k in zip(shape, steps)]
    base = (np.arange(int(np.prod(full))) / 7).astype(dtype).reshape(full)
    x = base[tuple(slice(None, None, k) for k in steps)]
    tokens = x.shape[-3] if x.ndim >= 3 else 1
    right = st.lists(st.integers(0, 2**32), min_size=tokens, max_size=tokens)
    wrong = st.lists(st.integers(0, 9), min_size=tokens + 1, max_size=tokens + 3) | st.just(
        [-1] * tokens if tokens else [-1])
    positions = draw(wrong if fault == "positions" else right)
    n_rot = draw(st.sampled_from([dims + 1, head_dim + 2, 0]) if fault == "n_rot" else
                 st.sampled_from([None, dims]))
    out = draw(st.sampled_from(["none", "fresh", "self"]))
    out = {"none": None, "fresh": np.empty_like(x), "self": x}[out]
    if fault == "out":
        out = np.empty(x.shape[:-1] + (x.shape[-1] + 2,), x.dtype)
    mode = "bogus" if fault == "mode" else draw(st.sampled_from(["neox", "normal"]))
    original = x.copy()
    try:
        result = pyntk.rotate(x, positions, RopeScaling(dims=dims), mode=mode, n_rot=n_rot,
                              out=out, threads=draw(st.sampled_from([None, 1, 2])))
    except (TypeError, ValueError) as exc:
        assert fault is not None, exc
        event(f"{fault} raised {type(exc).__name__}")
        return
    assert fault is None or x.size == 0, f"{fault} was accepted"
    event("rotated" + (" (empty)" if x.size == 0 else ""))
    assert_rotated(result, original, np.asarray(positions, np.int64), RopeScaling(dims=dims), mode)
