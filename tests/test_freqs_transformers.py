"""Frequencies of the C++ core and the numpy reference vs Hugging Face transformers' own rope functions.

transformers' values are recorded in tests/data/ by tools/record_transformers.py, with the exact
inputs and the versions, so these tests need neither torch nor transformers. Where both are
installed, the recording is checked against transformers live as well; PYNTK_TEST_CROSSCHECK=1
(set by .ci/run when it installed them) makes that check fail instead of skip without them.
"""

import json
import math
import os

import numpy as np
import pytest
import record_transformers

from pyntk import RopeScaling, inv_freq, reference
from test_freqs import max_rel

# transformers works in float32: its pow rounds the exponent 2i/d to ~6e-8 relative, times
# ln(base) <= 14 gives ~8e-7, and llama3's band blend adds a divide and a blend of such values.
FLOAT32_RTOL = 4e-6
ATTENTION_RTOL = 1e-12  # the attention factor is a float64 formula on both sides

RECORDING = json.loads(record_transformers.OUT.read_text())
RECORDED = [(RopeScaling(**c["scaling"]), c["seq_len"],
             np.asarray(c["inv_freq_float32"], dtype=np.float32).astype(np.float64), c["attention"])
            for c in RECORDING["cases"]]
IMPLEMENTATIONS = {"core": inv_freq, "reference": reference.inv_freq}


def recorded(method):
    return [case for case in RECORDED if case[0].method == method]


def mismatches(cases, fn):
    """The cases where fn(scaling, seq_len) differs from transformers beyond float32 rounding."""
    bad = []
    for s, seq_len, theirs, their_attention in cases:
        ours, our_attention = fn(s, seq_len)
        rel = max_rel(ours, theirs)
        if rel > FLOAT32_RTOL or abs(our_attention - their_attention) > ATTENTION_RTOL * their_attention:
            bad.append(f"{s.describe()} seq_len={seq_len}: {rel:.3g} relative, "
                       f"attention {our_attention!r} vs {their_attention!r}")
    return bad


def test_recording_says_what_made_it_and_is_current():
    assert RECORDING["recorded_by"] == "tools/record_transformers.py"
    assert RECORDING["transformers"] and RECORDING["torch"]
    assert [(s, seq_len) for s, seq_len, _, _ in RECORDED] == list(record_transformers.cases()), \
        "the cases in tools/record_transformers.py changed: run it again"


@pytest.mark.parametrize("method", record_transformers.METHODS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_transformers(method, implementation):
    cases = recorded(method)
    assert cases
    bad = mismatches(cases, IMPLEMENTATIONS[implementation])
    assert not bad, f"{method}: {len(bad)} of {len(cases)} cases differ, e.g. {bad[0]}"


def test_yarn_matches_transformers_with_beta_and_attn_factor():
    [case] = [c for c in recorded("yarn") if c[0].attn_factor != 1.0]
    s = case[0]
    assert (s.beta_fast, s.beta_slow, s.attn_factor, s.factor) == (16, 2, 0.8, 6.0)
    assert not mismatches([case], inv_freq)
    assert inv_freq(s)[1] == pytest.approx(0.8 * (0.1 * math.log(6.0) + 1.0), rel=1e-15)


@pytest.mark.parametrize("method", record_transformers.METHODS)
def test_a_scale_error_beyond_float32_rounding_is_caught(method):
    def scaled(s, seq_len):
        inv, attention = inv_freq(s, seq_len)
        return inv * (1 + 2.5 * FLOAT32_RTOL), attention
    cases = recorded(method)
    assert cases and len(mismatches(cases, scaled)) == len(cases)


# Deliberately wrong formulas, each a plausible slip; the transformers comparison must catch it.
def _wrong_dynamic_exponent(s, seq_len):
    multiplier = s.factor * max(seq_len, s.original_context) / s.original_context - (s.factor - 1)
    base = s.base * multiplier ** (s.dims / (s.dims - 1))
    return base ** (-2.0 * np.arange(s.dims // 2) / s.dims), 1.0


def _wrong_ntk_no_exponent(s, seq_len):
    return (s.base * s.alpha) ** (-2.0 * np.arange(s.dims // 2) / s.dims), 1.0


def _wrong_yarn_untruncated_ramp(s, seq_len):
    d, plain = s.dims, reference.inv_freq(RopeScaling(method="none", base=s.base, dims=s.dims))[0]

    def corr(r):
        return d * math.log(s.original_context / (2 * math.pi * r)) / (2 * math.log(s.base))
    low, high = max(0.0, corr(s.beta_fast)), min(d - 1.0, corr(s.beta_slow))
    keep = 1 - np.clip((np.arange(d // 2) - low) / max(0.001, high - low), 0, 1)
    return plain / s.factor * (1 - keep) + plain * keep, reference.inv_freq(s)[1]


def _wrong_yarn_no_temperature(s, seq_len):
    return reference.inv_freq(s)[0], 1.0


def _wrong_linear_multiplies(s, seq_len):
    inv = reference.inv_freq(s)[0]
    return inv * s.factor * s.factor, 1.0


@pytest.mark.parametrize("wrong, method", [
    (_wrong_dynamic_exponent, "dynamic"),
    (_wrong_ntk_no_exponent, "ntk"),
    (_wrong_yarn_untruncated_ramp, "yarn"),
    (_wrong_yarn_no_temperature, "yarn"),
    (_wrong_linear_multiplies, "linear"),
])
def test_a_wrong_formula_is_caught(wrong, method):
    # Only where the method changes something can the slip show.
    cases = [c for c in recorded(method) if (c[0].alpha if method == "ntk" else c[0].factor) != 1.0
             and (c[1] is None or c[1] > c[0].original_context)]
    assert cases and len(mismatches(cases, wrong)) == len(cases)


@pytest.fixture(scope="module")
def live():
    """transformers' values computed now, for every recorded case."""
    if os.environ.get("PYNTK_TEST_CROSSCHECK") == "1":
        import torch  # noqa: F401  (required: fail rather than skip)
        import transformers  # noqa: F401
    else:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    return [(s, seq_len, *record_transformers.hf_inv_freq(s, seq_len)) for s, seq_len, _, _ in RECORDED]


def test_recording_matches_transformers_now(live):
    import transformers
    by_case = {(s, seq_len): (inv, attention) for s, seq_len, inv, attention in RECORDED}
    bad = mismatches(live, lambda s, seq_len: by_case[s, seq_len])
    assert not bad, (f"transformers {transformers.__version__} (recorded: {RECORDING['transformers']}) "
                     f"computes otherwise in {len(bad)} cases, e.g. {bad[0]}: find out why, then "
                     "run tools/record_transformers.py again")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_transformers_now(live, implementation):
    bad = mismatches(live, IMPLEMENTATIONS[implementation])
    assert not bad, f"{len(bad)} of {len(live)} cases differ, e.g. {bad[0]}"
