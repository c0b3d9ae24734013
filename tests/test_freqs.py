"""Frequencies: C++ core vs numpy reference, both float64, to CORE_RTOL over a grid.

test_freqs_transformers.py checks both against Hugging Face transformers.
"""

import itertools

import numpy as np
import pytest

from pyntk import METHODS, RopeScaling, inv_freq, reference

CORE_RTOL = 1e-12

DIMS = [32, 64, 80, 96, 128, 256]
BASES = [1e4, 1e5, 5e5, 1e6]
FACTORS = [1.0, 2.0, 4.0, 8.0, 32.0]
CONTEXTS = [2048, 8192]


def scalings(method):
    for dims, base, factor, ctx in itertools.product(DIMS, BASES, FACTORS, CONTEXTS):
        kw = dict(method=method, dims=dims, base=base)
        if method == "ntk":
            kw["alpha"] = factor
        elif method != "none":
            kw["factor"] = factor
        if method in ("dynamic", "ntk-by-parts", "yarn", "llama3"):
            kw["original_context"] = ctx
        yield RopeScaling(**kw)


def max_rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b) / np.abs(b))) if a.size else 0.0


@pytest.mark.parametrize("method", list(METHODS))
def test_core_matches_reference_over_grid(method):
    worst = 0.0
    seen = 0
    for s in scalings(method):
        lengths = [None]
        if method == "dynamic":
            lengths += [s.original_context // 2, s.original_context, 3 * s.original_context + 1, 1 << 20]
        for seq_len in lengths:
            ours, our_attention = inv_freq(s, seq_len)
            theirs, their_attention = reference.inv_freq(s, seq_len)
            worst = max(worst, max_rel(ours, theirs))
            assert our_attention == pytest.approx(their_attention, rel=CORE_RTOL, abs=0)
            seen += 1
    assert seen >= len(DIMS) * len(BASES) * len(FACTORS)
    assert worst <= CORE_RTOL, f"{method}: core and reference differ by {worst:.3g} relative"


def test_comparison_detects_a_one_ulp_scale_error():
    # The grid check must be able to fail: a deliberate 1e-11 error is caught.
    s = RopeScaling(method="ntk", alpha=4, dims=128)
    ours, _ = inv_freq(s)
    assert max_rel(ours * (1 + 1e-11), reference.inv_freq(s)[0]) > CORE_RTOL
