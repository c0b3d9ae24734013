"""RopeScaling validation: every bad parameter is a ValueError naming it and its range."""

import math

import numpy as np
import pytest

from pyntk import METHODS, RopeScaling, inv_freq
from pyntk.reference import inv_freq as reference_inv_freq
from pyntk.scaling import MAX_DIMS, USES, needs_context


def make(method="none", **kw):
    if method in ("dynamic", "ntk-by-parts", "yarn", "llama3"):
        kw.setdefault("original_context", 4096)
    return RopeScaling(method=method, **kw)


@pytest.mark.parametrize("kw, words", [
    (dict(method="ntk", alpha=0.5), ["alpha", ">= 1"]),
    (dict(method="ntk", alpha=math.nan), ["alpha", "finite"]),
    (dict(method="ntk", alpha=math.inf), ["alpha", "finite"]),
    (dict(method="linear", factor=0.9), ["factor", ">= 1"]),
    (dict(method="yarn", factor=-2.0), ["factor", ">= 1"]),
    (dict(dims=0), ["dims", "2"]),
    (dict(dims=7), ["dims", "even"]),
    (dict(dims=-4), ["dims"]),
    (dict(dims=64.5), ["dims", "whole"]),
    (dict(dims=True), ["dims", "whole"]),
    (dict(dims=MAX_DIMS + 2), ["dims", str(MAX_DIMS)]),
    (dict(method="ntk", alpha=2, dims=2), ["dims", "4"]),
    (dict(base=1.0), ["base", "> 1"]),
    (dict(base=0.5), ["base", "> 1"]),
    (dict(base=math.nan), ["base", "finite"]),
    (dict(base="x"), ["base", "number"]),
    (dict(method="ntk2"), ["unknown method", "ntk-by-parts"]),
    (dict(method="yarn", factor=4, original_context=None), ["original_context"]),
    (dict(method="yarn", factor=4, original_context=0), ["original_context", "1"]),
    (dict(method="yarn", factor=4, beta_fast=1, beta_slow=2), ["beta_fast", "beta_slow"]),
    (dict(method="yarn", factor=4, attn_factor=0), ["attn_factor", "> 0"]),
    (dict(method="llama3", factor=8, low_freq_factor=4, high_freq_factor=1), ["high_freq_factor"]),
    (dict(method="linear", alpha=2), ["alpha", "does not apply", "ntk"]),
    (dict(method="ntk", alpha=2, factor=2), ["factor", "does not apply"]),
    (dict(method="linear", factor=2, beta_fast=16), ["beta_fast", "yarn"]),
])
def test_invalid_parameters_name_the_parameter(kw, words):
    method = kw.pop("method", "none")
    with pytest.raises(ValueError) as e:
        make(method, **kw)
    for word in words:
        assert word in str(e.value)


PARAMETERS = ("original_context", "alpha", "factor", "beta_fast", "beta_slow", "attn_factor",
              "low_freq_factor", "high_freq_factor")
OTHER_VALUE = {"original_context": 4096, "alpha": 2.0, "factor": 2.0, "beta_fast": 16.0, "beta_slow": 2.0,
               "attn_factor": 1.5, "low_freq_factor": 2.0, "high_freq_factor": 8.0}


@pytest.mark.parametrize("method", list(METHODS))
def test_uses_is_the_table_rope_scaling_enforces(method):
    # the public table every other module derives from: each parameter it lists is taken, each
    # other refused; needs_context says which methods cannot do without the training context
    assert list(USES) == list(METHODS) and isinstance(USES[method], tuple)
    assert needs_context(method) == ("original_context" in USES[method])
    context = {"original_context": 4096} if needs_context(method) else {}
    for name in PARAMETERS:
        kw = {**context, name: OTHER_VALUE[name]}
        if name in USES[method]:
            assert getattr(RopeScaling(method=method, **kw), name) == OTHER_VALUE[name]
        elif name != "original_context":  # any method may carry the context it was set up for
            with pytest.raises(ValueError, match=f"{name} does not apply"):
                RopeScaling(method=method, **kw)
    if needs_context(method):
        with pytest.raises(ValueError, match="needs original_context"):
            RopeScaling(method=method)


@pytest.mark.parametrize("kw, cause", [
    (dict(method="ntk", alpha=1e300), "alpha"),  # the NTK base overflows
    (dict(method="ntk", alpha=10, base=1e308), "alpha"),
    (dict(method="dynamic", factor=1e300), "factor"),  # the base at factor * original_context
    (dict(method="linear", factor=1e308, base=1e300), "factor"),  # the longest wavelength overflows
    (dict(method="yarn", factor=1e308, base=1e300), "factor"),
    (dict(method="none", base=1.7e308, dims=MAX_DIMS), "base"),
])
def test_a_scaled_base_or_wavelength_past_float64_is_refused(kw, cause):
    # These were accepted, then each consumer failed its own way: OverflowError in the NTK base,
    # a ZeroDivisionError in pyntk freqs' wavelengths, an infinite base in llama.cpp's mapping.
    method = kw.pop("method")
    with pytest.raises(ValueError, match=f"^{cause} .* is too large for {method}: .* choose a smaller {cause}$"):
        make(method, **kw)


@pytest.mark.parametrize("kw", [dict(method="ntk", alpha=1e250), dict(method="dynamic", factor=1e120),
                                dict(method="linear", factor=1e300), dict(method="none", base=1e300)])
def test_large_accepted_scalings_have_finite_positive_frequencies_and_wavelengths(kw):
    s = make(**kw)
    inv, _ = reference_inv_freq(s, seq_len=int(s.factor * 4096))  # dynamic: at its target context
    assert np.isfinite(inv).all() and (inv > 0).all() and np.isfinite(2 * np.pi / inv).all()


def test_valid_parameters_are_normalised():
    s = make("yarn", factor=np.int64(4), dims=np.int64(64), original_context=np.uint32(8192))
    assert (s.dims, s.original_context, s.factor) == (64, 8192, 4.0)
    assert all(type(v) is t for v, t in ((s.dims, int), (s.original_context, int), (s.factor, float)))


def test_ntk_base_is_published_formula():
    s = make("ntk", alpha=4, dims=128, base=10000)
    assert s.ntk_base == pytest.approx(10000 * 4 ** (128 / 126), rel=1e-15)
    with pytest.raises(ValueError, match="ntk"):
        _ = make("linear", factor=2).ntk_base


def test_describe_mentions_parameters():
    assert make("ntk", alpha=4, base=10000, dims=128).describe() == "ntk alpha=4 (base 10000 -> 40889.9)"
    assert make("yarn", factor=4).describe() == "yarn factor=4 original_context=4096"
    assert make("yarn", factor=4, beta_fast=16).describe() == "yarn beta_fast=16 factor=4 original_context=4096"


def test_every_method_is_in_the_core_and_in_order():
    from pyntk import _core
    assert [m.replace("-", "_") for m in METHODS] == list(_core.Method.__members__)
    assert [int(v) for v in _core.Method.__members__.values()] == list(range(len(METHODS)))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs(method):
    kw = {"ntk": dict(alpha=2.0)}.get(method, {} if method == "none" else dict(factor=2.0))
    inv, attention = inv_freq(make(method, **kw), seq_len=8192)
    assert inv.shape == (64,) and inv.dtype.name == "float64"
    assert math.isfinite(attention) and attention >= 1.0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_inv_freq_rejects_bad_seq_len(bad):
    with pytest.raises((ValueError, TypeError)):
        inv_freq(make("dynamic", factor=2), seq_len=bad)


def test_inv_freq_rejects_non_scaling():
    with pytest.raises(TypeError, match="RopeScaling"):
        inv_freq({"method": "ntk"})


@pytest.mark.parametrize("args", [
    (99, 64, 1e4, 0, 1, 1, 32, 1, 1, 1, 4, 0),  # not a Method
])
def test_core_rejects_bad_enum(args):
    from pyntk import _core
    with pytest.raises(TypeError):
        _core.inv_freq(*args)


@pytest.mark.parametrize("dims, base, ctx", [(0, 1e4, 0), (3, 1e4, 0), (-2, 1e4, 0), (1 << 20, 1e4, 0),
                                             (64, 0.5, 0), (64, float("nan"), 0)])
def test_core_raises_instead_of_crashing(dims, base, ctx):
    from pyntk import _core
    with pytest.raises(ValueError):
        _core.inv_freq(_core.Method.none, dims, base, ctx, 1, 1, 32, 1, 1, 1, 4, 0)
    with pytest.raises(ValueError):
        _core.inv_freq(_core.Method.yarn, 64, 1e4, 0.0, 1, 4, 32, 1, 1, 1, 4, 0)
