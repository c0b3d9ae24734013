"""Hostile arguments to the frequency functions: a TypeError/ValueError or a finite result, never a
crash. tools/sanitize.sh runs this module against the ASan/UBSan build of the core, with
test_rotate.py (whose fuzz covers rotate's shapes, strides, dtypes and zero sizes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pyntk
from pyntk import RopeScaling, _core

FUZZ = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

HOSTILE_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1.0, 1.5, 1e-308, 5e-324,
                                  1e308, 2.0**63, 4096.0, 10000.0]) | st.floats()
HOSTILE = HOSTILE_FLOATS | st.integers(-2**70, 2**70) | st.sampled_from([None, "10", [1.0], True, b"x"])
DIMS = st.sampled_from([-2**63, -2, 0, 1, 2, 3, 4, 6, 64, 128, 2**20, 2**31, 2**62]) | st.integers(-10, 300)
METHODS = list(_core.Method.__members__.values())


def finite_table(inv, attention, half):
    assert isinstance(inv, np.ndarray) and inv.dtype == np.float64 and inv.shape == (half,)
    assert isinstance(attention, float)


@FUZZ
@given(method=st.sampled_from(METHODS) | st.sampled_from([99, "ntk", None]), dims=DIMS | HOSTILE,
       floats=st.lists(HOSTILE_FLOATS | HOSTILE, min_size=10, max_size=10))
def test_core_inv_freq_with_hostile_arguments(method, dims, floats):
    try:
        inv, attention = _core.inv_freq(method, dims, *floats)
    except (TypeError, ValueError) as e:
        event(type(e).__name__)
        return
    event("computed")
    finite_table(inv, attention, dims // 2)
    # The private core computes whatever it is given (a zero factor gives inf); the functions that
    # use a table refuse a non-finite one.
    try:
        cos, sin = _core.cos_sin(np.arange(3), inv, attention)
    except ValueError:  # tables from real scalings lie in [0, 1]
        assert not (((inv >= 0) & (inv <= 1)).all() and abs(attention) <= np.finfo(np.float32).max)
        return
    assert np.isfinite(cos).all() and np.isfinite(sin).all()


SCALING_ARGS = st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(list(pyntk.METHODS) + ["bogus", 3]),
    "base": HOSTILE, "dims": DIMS | HOSTILE, "original_context": HOSTILE | st.integers(1, 2**33),
    "alpha": HOSTILE, "factor": HOSTILE, "beta_fast": HOSTILE, "beta_slow": HOSTILE, "attn_factor": HOSTILE,
    "low_freq_factor": HOSTILE, "high_freq_factor": HOSTILE,
})
SEQ_LEN = st.none() | st.integers(-5, 2**70) | st.sampled_from([1.5, -0.0, 8192.0, "10", True, math.nan])


@FUZZ
@given(kwargs=SCALING_ARGS, seq_len=SEQ_LEN)
def test_inv_freq_of_any_accepted_scaling_is_finite_and_positive(kwargs, seq_len):
    try:
        scaling = RopeScaling(**kwargs)
    except (TypeError, ValueError):
        event("scaling refused")
        return
    try:
        inv, attention = pyntk.inv_freq(scaling, seq_len=seq_len)
    except (TypeError, ValueError):
        event("seq_len refused")
        return
    event("computed")
    finite_table(inv, attention, scaling.dims // 2)
    assert np.isfinite(inv).all() and (inv > 0).all() and math.isfinite(attention) and attention > 0


# Positions up to 2^53 are valid (beyond, a double angle p*inv is not even exact, and they are refused).
POSITIONS = st.one_of(
    st.lists(st.integers(0, 2**53), max_size=5),
    st.lists(st.integers(-2**64, 2**64), max_size=3),
    st.sampled_from([[], [[1, 2]], [1.5], [math.nan], ["1"], [None], [True], [2**63], 7]),
    st.integers(0, 4).map(lambda n: np.arange(n, dtype=np.uint64)),
    st.integers(0, 4).map(lambda n: np.arange(n, dtype=np.int16)[::-1]),
    st.just(np.zeros((0, 3), np.int64)),
)


@FUZZ
@given(positions=POSITIONS, method=st.sampled_from(["none", "ntk", "dynamic", "yarn", "llama3"]),
       dims=st.sampled_from([2, 4, 6, 64]), n_rot=st.none() | st.sampled_from([0, 1, 2, 4, 63, 64, 2.0, "4"]),
       seq_len=SEQ_LEN)
def test_cos_sin_with_hostile_positions(positions, method, dims, n_rot, seq_len):
    kw = {"ntk": dict(alpha=4.0), "none": {}}.get(method, dict(factor=4.0, original_context=4096))
    if method in ("ntk", "dynamic") and dims < 4:
        dims = 4
    try:
        cos, sin = pyntk.cos_sin(positions, RopeScaling(method=method, dims=dims, **kw), n_rot=n_rot,
                                 seq_len=seq_len)
    except (TypeError, ValueError) as e:
        event(f"refused: {type(e).__name__}")
        return
    event("computed" + (" (empty)" if cos.size == 0 else ""))
    half = (n_rot or dims) // 2
    assert cos.shape == sin.shape == (np.asarray(positions).size, half) and cos.dtype == np.float32
    assert np.isfinite(cos).all() and np.isfinite(sin).all()
    _, attention = pyntk.inv_freq(RopeScaling(method=method, dims=dims, **kw), seq_len=1)
    assert (np.abs(cos) <= attention * 1.0001).all() and (np.abs(sin) <= attention * 1.0001).all()


TABLES = st.one_of(
    st.lists(HOSTILE_FLOATS, min_size=0, max_size=6).map(lambda v: np.array(v, np.float64)),
    st.sampled_from([np.ones(4, np.float32), np.ones((2, 2)), np.ones(8)[::2], np.ones(4).astype(">f8"),
                     np.array([1, 2], np.int64)]),
)


CORE_POSITIONS = st.one_of(
    st.lists(st.integers(0, 2**53), max_size=4).map(lambda v: np.array(v, np.int64)),
    st.sampled_from([np.array([-1]), np.arange(3, dtype=np.int32), np.zeros((2, 2), np.int64),
                     np.arange(6)[::2], np.zeros(0, np.int64)]),
)


@FUZZ
@given(positions=CORE_POSITIONS, inv=TABLES, attention=HOSTILE_FLOATS)
def test_core_cos_sin_with_hostile_tables(positions, inv, attention):
    try:
        cos, sin = _core.cos_sin(positions, inv, attention)
    except (TypeError, ValueError) as e:
        event(f"refused: {type(e).__name__}")
        return
    assert cos.shape == sin.shape == (positions.size, inv.size)
    event("computed")
    assert np.isfinite(cos).all() and np.isfinite(sin).all()
    assert (np.abs(cos) <= abs(np.float32(attention)) * 1.0001).all()


def test_infinite_seq_len_is_a_value_error():
    with pytest.raises(ValueError, match="seq_len"):
        pyntk.inv_freq(RopeScaling(method="dynamic", factor=2, original_context=4096), seq_len=math.inf)


@pytest.mark.parametrize("kernel", pyntk.rope.kernels())
def test_positions_past_2_53_are_refused(kernel):
    # Past 2^53 the SIMD kernels' range reduction gave |cos| > 1: every kernel refuses them alike.
    s = RopeScaling(dims=2)
    with pyntk.rope.use_kernel(kernel):
        cos, _ = pyntk.cos_sin([2**53], s)
        assert np.abs(cos).max() <= 1
        for call in (lambda: pyntk.cos_sin([2**53 + 1], s),
                     lambda: pyntk.rotate(np.ones((1, 1, 2), np.float32), [2**62], s)):
            with pytest.raises(ValueError, match="at most 2\\^53"):
                call()
