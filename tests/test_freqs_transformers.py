"""Frequencies of the C++ core and the numpy reference vs Hugging Face transformers' own rope functions.

transformers computes in float32, hence FLOAT32_RTOL.
"""

import math

import numpy as np
import pytest

from pyntk import RopeScaling, inv_freq, reference
from test_freqs import max_rel, scalings

# transformers works in float32: its pow rounds the exponent 2i/d to ~6e-8 relative, times
# ln(base) <= 14 gives ~8e-7, and llama3's band blend adds a divide and a blend of such values.
FLOAT32_RTOL = 4e-6

transformers = pytest.importorskip("transformers")
rope_utils = pytest.importorskip("transformers.modeling_rope_utils")


def hf_config(s: RopeScaling, params: dict, max_positions: int):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=s.dims * 2, num_attention_heads=2, head_dim=s.dims,
                       max_position_embeddings=max_positions,
                       rope_parameters={"rope_theta": s.base, **params})


def hf_inv_freq(s: RopeScaling, seq_len=None):
    """transformers' own rope function for the same scaling."""
    L0 = s.original_context or 4096
    if s.method == "linear":
        cfg = hf_config(s, {"rope_type": "linear", "factor": s.factor}, L0)
        inv, att = rope_utils._compute_linear_scaling_rope_parameters(cfg)
    elif s.method == "dynamic":
        cfg = hf_config(s, {"rope_type": "dynamic", "factor": s.factor}, L0)
        inv, att = rope_utils._compute_dynamic_ntk_parameters(cfg, seq_len=seq_len)
    elif s.method == "ntk":
        # Static NTK is Dynamic NTK with factor 1 evaluated at alpha * L0.
        cfg = hf_config(s, {"rope_type": "dynamic", "factor": 1.0}, L0)
        inv, att = rope_utils._compute_dynamic_ntk_parameters(cfg, seq_len=s.alpha * L0)
    elif s.method == "yarn":
        cfg = hf_config(s, {"rope_type": "yarn", "factor": s.factor, "beta_fast": s.beta_fast,
                            "beta_slow": s.beta_slow, "original_max_position_embeddings": L0},
                        int(L0 * s.factor))
        inv, att = rope_utils._compute_yarn_parameters(cfg)
        att *= s.attn_factor
    elif s.method == "llama3":
        cfg = hf_config(s, {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                            "high_freq_factor": s.high_freq_factor,
                            "original_max_position_embeddings": L0}, int(L0 * s.factor))
        inv, att = rope_utils._compute_llama3_parameters(cfg)
    else:
        raise AssertionError(s.method)
    return inv.double().numpy(), float(att)


HF_METHODS = ["linear", "ntk", "dynamic", "yarn", "llama3"]


def hf_cases(method):
    for s in scalings(method):
        if method in ("yarn", "llama3") and s.factor == 1.0:
            continue  # transformers wants max_position_embeddings > original for these
        if method == "dynamic":
            for seq_len in (s.original_context // 2, 3 * s.original_context + 1):
                yield s, seq_len
        else:
            yield s, None


@pytest.mark.parametrize("method", HF_METHODS)
@pytest.mark.parametrize("implementation", ["core", "reference"])
def test_matches_transformers(method, implementation):
    ours_fn = inv_freq if implementation == "core" else reference.inv_freq
    worst = 0.0
    for s, seq_len in hf_cases(method):
        theirs, their_attention = hf_inv_freq(s, seq_len)
        ours, our_attention = ours_fn(s, seq_len)
        worst = max(worst, max_rel(ours, theirs))
        assert our_attention == pytest.approx(their_attention, rel=1e-12), s
    assert worst <= FLOAT32_RTOL, f"{method}: {implementation} vs transformers: {worst:.3g} relative"


def test_yarn_matches_transformers_with_beta_and_attn_factor():
    s = RopeScaling(method="yarn", dims=128, base=5e5, factor=6.0, original_context=4096,
                    beta_fast=16, beta_slow=2, attn_factor=0.8)
    theirs, att = hf_inv_freq(s)
    ours, our_att = inv_freq(s)
    assert max_rel(ours, theirs) <= FLOAT32_RTOL
    assert our_att == pytest.approx(0.8 * (0.1 * math.log(6.0) + 1.0), rel=1e-15) == pytest.approx(att)


# Deliberately wrong formulas, each a plausible slip; the transformers comparison must catch it.
def _wrong_dynamic_exponent(s, seq_len):
    multiplier = s.factor * max(seq_len, s.original_context) / s.original_context - (s.factor - 1)
    base = s.base * multiplier ** (s.dims / (s.dims - 1))
    return base ** (-2.0 * np.arange(s.dims // 2) / s.dims), 1.0


def _wrong_ntk_no_exponent(s, seq_len):
    return (s.base * s.alpha) ** (-2.0 * np.arange(s.dims // 2) / s.dims), 1.0


def _wrong_yarn_untruncated_ramp(s, seq_len):
    d, plain = s.dims, reference.inv_freq(s.replace(method="none", factor=1.0, original_context=None))[0]

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
    caught = 0
    total = 0
    for s, seq_len in hf_cases(method):
        if (s.factor if method != "ntk" else s.alpha) == 1.0 or (seq_len is not None and seq_len <= s.original_context):
            continue  # the slip cannot show where the method does nothing
        theirs, att = hf_inv_freq(s, seq_len)
        ours, our_att = wrong(s, seq_len)
        total += 1
        caught += max_rel(ours, theirs) > FLOAT32_RTOL or abs(our_att - att) > 1e-12 * att
    assert total and caught == total, f"only {caught}/{total} wrong cases caught"
