"""pyntk's kernels against llama.cpp's own (ggml_rope_ext from llama-cpp-python's libggml)."""

import importlib.util

import numpy as np
import pytest

import pyntk
from pyntk import reference
from pyntk import ggml as pyntk_ggml
from pyntk.scaling import RopeScaling
from test_rotate import _pairs

EPS32 = 2.0**-24

# The methods llama.cpp computes natively (none, linear, ntk as a base, yarn) and the ones
# pyntk.ggml maps onto its parameters (ntk-by-parts, llama3 frequency factors, dynamic as
# a base).
SCALINGS = [
    RopeScaling(),
    RopeScaling("linear", factor=4),
    RopeScaling("ntk", alpha=8),
    RopeScaling("yarn", factor=16, original_context=4096, attn_factor=1.1),
    RopeScaling("ntk-by-parts", factor=8, original_context=2048),
    RopeScaling("llama3", factor=8, original_context=8192),
    RopeScaling("dynamic", factor=4, original_context=512),
]

# (tokens, heads, head_dim, n_rot), with vector remainders and partial rotation.
SHAPES = [(5, 3, 64, 64), (9, 7, 80, 80), (4, 5, 96, 96), (3, 17, 128, 128), (2, 3, 256, 256),
          (6, 2, 128, 64), (3, 33, 96, 20)]


@pytest.fixture(scope="module")
def ggml():
    pytest.importorskip("llama_cpp")
    return pyntk_ggml


def llama_cpp_tolerance(x, positions, scaling, mode):
    """How far llama.cpp's float32 arithmetic may stray from exact RoPE, per pair.

    It forms theta_i = p * theta_scale^i by i float32 multiplications, so the angle of pair
    i is off by up to ~(2i + 8) float32 roundings of the unscaled angle p * b^(-2i/d) (the
    larger of YaRN's two mixed angles); cosf/sinf, the YaRN mix and the output add a few
    roundings more. The error of a value is that angle error times its pair's length.
    Measured errors stay under 40% of this bound for every method here.
    """
    d = scaling.dims
    i = np.arange(d // 2)
    plain = scaling.base ** (-2.0 * i / d)
    theta = np.asarray(positions, np.float64)[..., None] * plain
    angle = theta * (2 * i + 8) * EPS32 + 8 * EPS32
    _, attention = reference.inv_freq(scaling)
    length = np.hypot(*_pairs(x.astype(np.float64), d, mode)) * attention
    bound = length * angle[..., None, :]
    if x.dtype == np.float16:
        bound = bound + 2.0**-10 * length  # each side rounds to float16 once
    return bound


def assert_close_to_llama_cpp(got, expected, x, positions, scaling, mode):
    d = scaling.dims
    bound = llama_cpp_tolerance(x, positions, scaling, mode)
    e0, e1 = _pairs(np.abs(got.astype(np.float64) - expected), d, mode)
    ratio = np.maximum(e0, e1) / np.maximum(bound, 1e-30)
    assert ratio.max() <= 1.0, (
        f"{scaling.method} {mode} {x.dtype}: {ratio.max():.3g} times the float32 bound"
    )
    np.testing.assert_array_equal(got[..., d:], expected[..., d:])


@pytest.mark.llama
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["neox", "normal"])
@pytest.mark.parametrize("scaling", SCALINGS, ids=[s.method for s in SCALINGS])
def test_matches_llama_cpp(ggml, kernel, rng, scaling, mode, dtype):
    for tokens, heads, head_dim, n_rot in SHAPES:
        s = scaling.replace(dims=n_rot)
        x = rng.standard_normal((tokens, heads, head_dim)).astype(dtype)
        positions = np.concatenate([[0], rng.integers(0, 4096, tokens - 1)])
        seq_len = int(positions.max()) + 1
        expected = ggml.ggml_rope(x, positions, mode=mode, **ggml.ggml_args(s, seq_len))
        got = pyntk.rotate(x, positions, s, mode=mode, out=np.empty_like(x))
        assert_close_to_llama_cpp(got, expected, x, positions, s, mode)


@pytest.mark.llama
def test_batch_axis_and_threads_match_llama_cpp(ggml, rng):
    x = rng.standard_normal((3, 5, 7, 64)).astype(np.float32)
    positions = rng.integers(0, 3000, 5)
    s = SCALINGS[3].replace(dims=64)
    for mode in ("neox", "normal"):
        expected = ggml.ggml_rope(x, positions, mode=mode, threads=2, **ggml.ggml_args(s))
        got = pyntk.rotate(x.copy(), positions, s, mode=mode, threads=2)
        assert_close_to_llama_cpp(got, expected, x, positions, s, mode)


@pytest.mark.llama
def test_llama_cpp_drifts_at_large_positions_where_pyntk_does_not(ggml, rng):
    # The measurement: unit-variance inputs, largest error over 32 heads x 128 dims.
    s = RopeScaling(dims=128)
    worst = {}
    for p in (8192, 65536, 2**20):
        x = rng.standard_normal((1, 32, 128)).astype(np.float32)
        exact = reference.rotate(x, [p], s)
        llama = np.abs(ggml.ggml_rope(x, [p], **ggml.ggml_args(s)) - exact).max()
        ours = np.abs(pyntk.rotate(x.copy(), [p], s) - exact).max()
        worst[p] = (llama, ours)
        assert ours <= 2e-6 * np.sqrt(2) * np.abs(x).max(), worst  # a pair is at most √2 max|x|
    assert worst[2**20][0] > 1e-2, f"llama.cpp got accurate at 2^20: {worst}"
    assert worst[8192][0] > 1e-4, worst


@pytest.mark.llama
def test_rope_graph_runs_again_and_then_refuses(ggml, rng):
    x = rng.standard_normal((4, 2, 64)).astype(np.float16)
    with ggml.RopeGraph(x.shape, x.dtype, np.arange(4), 64, "normal", computes=2) as graph:
        graph.src[...] = x
        first = graph.compute().copy()
        np.testing.assert_array_equal(graph.compute(), first)
        with pytest.raises(ValueError, match="used up"):
            graph.compute()
    with pytest.raises(ValueError, match="closed"):
        graph.compute()


@pytest.mark.llama
def test_zero_sized_inputs(ggml):
    for shape in ((0, 2, 64), (3, 0, 64)):
        x = np.zeros(shape, np.float32)
        assert ggml.ggml_rope(x, np.zeros(shape[0], np.int64), 64).shape == shape


@pytest.mark.llama
@pytest.mark.parametrize("change, error", [
    (dict(n_rot=63), ValueError),
    (dict(n_rot=66), ValueError),
    (dict(n_rot=0), ValueError),
    (dict(mode="gptj"), ValueError),
    (dict(positions=np.arange(3)), ValueError),
    (dict(positions=np.array([0, 1, 2, -1])), ValueError),
    (dict(positions=np.array([0, 1, 2, 2**31])), ValueError),
    (dict(x=np.zeros((4, 2, 64))), TypeError),
    (dict(x=np.zeros((4, 64))), ValueError),
    (dict(freq_base=float("nan")), ValueError),
    (dict(freq_factors=np.ones(31)), ValueError),
    (dict(threads=0), ValueError),
])
def test_oracle_checks_arguments_before_ggml_can_abort(ggml, change, error):
    args = dict(x=np.zeros((4, 2, 64), np.float32), positions=np.arange(4), n_rot=64)
    args.update(change)
    with pytest.raises(error):
        ggml.ggml_rope(**args)


def test_missing_llama_cpp_python_is_a_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a))
    monkeypatch.setattr(pyntk_ggml, "_libs", None)
    with pytest.raises(pyntk.PyntkError, match="pip install"):
        pyntk_ggml.ggml_rope(np.zeros((1, 1, 2), np.float32), [0], 2)
    assert not pyntk_ggml.available()


def test_ggml_args_map_every_method():
    for s in SCALINGS:
        args = pyntk_ggml.ggml_args(s, seq_len=2048)
        assert args["n_rot"] == s.dims
    assert pyntk_ggml.ggml_args(SCALINGS[1])["freq_scale"] == 0.25
    # float32, as llama.cpp holds every rope float (pyntk.llamacpp's one mapping)
    assert pyntk_ggml.ggml_args(SCALINGS[2])["freq_base"] == float(np.float32(SCALINGS[2].ntk_base))
    yarn = pyntk_ggml.ggml_args(SCALINGS[3])
    assert (yarn["ext_factor"], yarn["attn_factor"], yarn["n_ctx_orig"]) == (1.0, float(np.float32(1.1)), 4096)
    with pytest.raises(TypeError):
        pyntk_ggml.ggml_args("yarn")
