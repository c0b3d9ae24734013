"""The reference networks of every architecture pyntk verifies, against llama.cpp itself, on tiny
random-weight models (tests/tinymodels.py) that llama.cpp loads and runs:

- near position 0 with float32 weights, the reference and llama.cpp agree to float32 precision,
  and assuming the other rope mode (or, for Gemma 3, another window) is far outside that;
- `pyntk verify` passes every scaling llama.cpp can apply, and fails a 1% wrong base and the
  wrong rope mode, per architecture;
- the per-layer rules: Gemma 3's sliding-window layers keep their base and window, Gemma 2's
  window (4096 when the file has none) and its window layers' scaling after `pyntk gguf-set`,
  Llama 3's rope_freqs apply on top of any scaling, Phi-3's LongRoPE factors switch with the
  context; Gemma 2's soft-capping of the attention scores and of the logits.
"""

import numpy as np
import pytest
from tinymodels import write_model

from pyntk import PyntkError, forward, verify
from pyntk.edit import plan_set
from pyntk.llamacpp import read as read_view
from pyntk.scaling import RopeScaling
from pyntk.writer import apply

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llama

FF = np.linspace(1.0, 8.0, 32)  # Llama 3 style rope_freqs: fast pairs kept, slow ones divided
MODELS = {
    "llama": dict(),
    "llama-rope_freqs": dict(freq_factors=FF),
    "qwen2": dict(arch="qwen2", biases=True, base=1e6),
    "qwen3": dict(arch="qwen3", base=1e6),
    # layer 0 a window layer (base 10000, 64 tokens), layer 1 global (pattern 2); untied: Gemma's
    # embeddings times sqrt(n_embd) would make tied logits one-hot
    "gemma3": dict(arch="gemma3", head_dim=128, n_head_kv=1, sliding_window=64, window_pattern=2,
                   base=1e6, tied=False),
    # layer 0 a window layer (llama.cpp's period 2), of 4096 tokens (its default: no key), layer 1
    # global; tied (gemma2 has no output matrix); both soft-caps at 5, where the attention scores
    # (|s| ~4 typical, up to ~30) and the logits (~13 uncapped) are well past tanh's linear range
    "gemma2": dict(arch="gemma2", head_dim=128, n_head_kv=2, softcap=5.0, attn_softcap=5.0),
    # fused QKV, 3/4 of each head rotated, LongRoPE factors (short below 1024 cells, long above)
    "phi3": dict(arch="phi3", rope_dims=48, original_context=1024, context=8192, attn_factor=1.1,
                 long_factors=np.linspace(1.0, 6.0, 24), short_factors=np.linspace(1.0, 1.5, 24)),
}
OTHER_MODE = {"normal": "neox", "neox": "normal"}


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    d = tmp_path_factory.mktemp("f32")
    return {name: write_model(d / f"{name}.gguf", **kw) for name, kw in MODELS.items()}


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    d = tmp_path_factory.mktemp("q8")
    return {name: write_model(d / f"{name}.gguf", weights="Q8_0", **kw) for name, kw in MODELS.items()}


def llama_cpp_logits(path, tokens, positions):
    from pyntk.llama import Session

    with Session(path, n_ctx=len(tokens)) as session:
        return session.decode(tokens, positions).astype(np.float64)


@pytest.mark.parametrize("name", MODELS)
def test_matches_llama_cpp_to_float32_precision(f32, name):
    path = f32[name]
    model = forward.load(path)
    tokens = np.random.default_rng(1).integers(0, 512, 96)
    positions = np.arange(96)  # past Gemma's 64-token window
    llama = llama_cpp_logits(path, tokens, positions)
    got = model.logits(tokens, positions)
    scale = np.abs(got).max()
    # a few float32 roundings; Gemma's GELU goes through ggml's half-precision table (below),
    # whose error stays the same on gemma2's logits, capped to +-5
    tolerance = {"gemma3": 1e-3, "gemma2": 2e-3}.get(name, 2e-5) * scale
    assert np.abs(llama - got).max() < tolerance
    wrong = model.logits(tokens, positions, mode=OTHER_MODE[model.rope.mode])
    assert np.abs(llama - wrong).max() > 100 * tolerance
    if name.startswith("gemma"):  # the reference with the table (ggml_rounding) is closer on average
        table = model.logits(tokens, positions, ggml_rounding=True)
        assert np.abs(llama - table).mean() < 0.5 * np.abs(llama - got).mean()


def test_gemma3_window_is_llama_cpp_s(f32):
    """llama-hparams.h is_masked_swa (standard): a key is masked once query - key >= the window."""
    path = f32["gemma3"]
    model = forward.load(path)
    tokens = np.random.default_rng(1).integers(0, 512, 96)
    llama = llama_cpp_logits(path, tokens, np.arange(96))
    assert model.rope.window_layers == (0,) and model.rope.sliding_window == 64
    errors = {}
    for window in (63, 64, 65):
        model.hp["n_swa"] = window
        try:
            errors[window] = np.abs(llama - model.logits(tokens, np.arange(96))).max()
        finally:
            model.hp["n_swa"] = 64
    assert errors[64] < 1e-3 * np.abs(llama).max()
    assert min(errors[63], errors[65]) > 20 * errors[64]


def _scalings(view):
    b, d, l0 = view.base, view.dims, view.original_context
    return {
        "none": RopeScaling(base=b, dims=d),
        "ntk": RopeScaling("ntk", base=b, dims=d, alpha=4),
        "linear": RopeScaling("linear", base=b, dims=d, factor=4),
        "yarn": RopeScaling("yarn", base=b, dims=d, factor=4, original_context=l0),
        "ntk-by-parts": RopeScaling("ntk-by-parts", base=b, dims=d, factor=4, original_context=l0),
    }


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["file", "none", "ntk", "linear", "yarn", "ntk-by-parts"])
def test_verify_passes_what_llama_cpp_applies(q8, name, method):
    path = q8[name]
    scaling = None if method == "file" else _scalings(read_view(path))[method]
    report = verify.verify(path, scaling, tokens=16)
    if name in ("gemma2", "gemma3") and method == "ntk-by-parts":
        # llama.cpp multiplies the window layers' cos/sin by the attn_factor that cancels YaRN's
        # temperature on the global ones: not what ntk-by-parts means (gguf-set refuses it for
        # gemma3). Gemma 2's window layers, run at the file's scale 1 (runtime flags do not reach
        # them), are shrunk the same way
        assert not report.passed and report.measured.kl > 2 * report.thresholds["kl"]
    else:
        assert report.passed, report


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["none", "yarn"])
def test_verify_fails_a_wrong_base_and_the_wrong_mode(q8, name, method):
    path = q8[name]
    claimed = _scalings(read_view(path))[method]
    for ran in (claimed.replace(base=claimed.base * 1.01), claimed.replace(base=claimed.base * 0.99)):
        report = verify.verify(path, ran, reference=claimed, tokens=16)
        assert not report.passed and report.measured.kl > 2 * report.thresholds["kl"], report
    mode = OTHER_MODE[read_view(path).mode]
    report = verify.verify(path, claimed, tokens=16, reference_mode=mode)
    assert not report.passed and report.measured.kl > 2 * report.thresholds["kl"], report


def test_gemma3_window_layers_keep_their_base(q8):
    path = q8["gemma3"]
    layers = forward.load(path).rotations(_scalings(read_view(path))["yarn"], 64)
    window, glob = layers
    assert window.scaling == RopeScaling(base=10000.0, dims=128) and window.multiplier == 1.0
    assert glob.scaling.method == "yarn" and glob.scaling.base == 1e6
    report = verify.verify(path, tokens=16)
    assert "1 of 2 layers run it; 1 sliding-window layers (window 64 tokens) keep base 10000" in report.layers


def test_rope_freqs_apply_on_top_of_every_scaling(q8, tmp_path):
    """The same weights without the rope_freqs tensor: the reference of that file against
    llama.cpp running the one with it fails, for the file's settings and for yarn on top."""
    path = q8["llama-rope_freqs"]
    plain = forward.load(write_model(tmp_path / "plain.gguf", weights="Q8_0"))
    with_factors = forward.load(path)
    assert with_factors.rotations(with_factors.file_scaling(), 64)[0].factors == "rope_freqs.weight"
    for scaling in (None, _scalings(read_view(path))["yarn"]):
        claimed = scaling or with_factors.file_scaling()
        layout = verify.make_layout(512, 16, verify.default_position(claimed, with_factors.rope), bos=None)
        llama = verify.llama_logits(path, scaling, layout)
        args = (layout.tokens, layout.positions, [(claimed, False), (claimed, True)], layout.visible)
        exact, rounded = with_factors.run(*args, rows=layout.queries)
        without = plain.run(*args, rows=layout.queries)[0]
        noise = verify.compare(exact, rounded).kl
        assert verify.compare(exact, llama).kl < 3 * noise
        assert verify.compare(without, llama).kl > 30 * noise


def test_phi3_longrope_factors_follow_the_context(q8):
    """model.cpp get_rope_factors: the long factors iff the context (padded to 256) exceeds
    original_context_length (1024 here): 1024 cells give the short ones, 1025 (-> 1280) the long."""
    path = q8["phi3"]
    model = forward.load(path)
    claimed = model.file_scaling()
    assert claimed.method == "yarn" and claimed.factor == 1.0  # only the attn_factor 1.1
    assert claimed.attn_factor == pytest.approx(1.1)
    layout = verify.make_layout(512, 16, 8192)
    for cells, factors in ((1024, "rope_factors_short.weight"), (1025, "rope_factors_long.weight")):
        assert model.rope.factors(cells) == factors
        llama = verify.llama_logits(path, None, layout, n_ctx=cells)
        runs = {}
        for assumed in (1024, 1025):
            exact, rounded = model.run(layout.tokens, layout.positions, [(claimed, False), (claimed, True)],
                                       layout.visible, rows=layout.queries, n_ctx=assumed)
            runs[assumed] = verify.compare(exact, llama).kl / verify.compare(exact, rounded).kl
        other = 2049 - cells
        assert runs[cells] < 3 and runs[other] > 30, runs
    report = verify.verify(path, tokens=16, context=1025)
    assert report.passed and "rope_factors_long" in report.layers


def test_refuses_what_llama_cpp_would_not_run(tmp_path):
    with pytest.raises(PyntkError, match="rotary sizes 64, 64, 32"):
        forward.load(write_model(tmp_path / "q.gguf", arch="qwen2", rope_dims=32))
    with pytest.raises(PyntkError, match="rope_freqs.weight.*plain qwen3"):
        forward.load(write_model(tmp_path / "q3.gguf", arch="qwen3", freq_factors=FF))
    # models/gemma2.cpp loads no output matrix (the token embeddings are it): llama.cpp refuses
    # a file with one as a tensor too many
    output = {"output.weight": np.zeros((512, 256), dtype=np.float32)}
    with pytest.raises(PyntkError, match="output.weight.*plain gemma2"):
        forward.load(write_model(tmp_path / "g2.gguf", arch="gemma2", extra_tensors=output))


@pytest.mark.parametrize("name", ["qwen2", "gemma2", "gemma3", "phi3"])
def test_kernel_check_pairs_neox_dimensions(f32, name):
    """`verify --kernel` bounds each NEOX pair (x[i], x[i + d/2]) by its own length."""
    report = verify.verify_kernel(f32[name], _scalings(read_view(f32[name]))["yarn"])
    assert report.mode == "neox" and report.passed and 0 < report.bound_ratio <= 1, report


@pytest.mark.parametrize("caps", [(5.0, 5.0), None], ids=["at-5", "defaults"])
def test_gemma2_soft_caps_are_llama_cpp_s(f32, tmp_path, caps):
    """models/gemma2.cpp: the attention scores (llama-graph.cpp build_attn_mha, attn_soft_cap) and
    the logits are soft-capped, c * tanh(s / c); without the keys at llama-hparams.h's 50 and 30
    (the logits always, unlike gemma3). A reference without either cap is far off llama.cpp."""
    if caps:
        path = f32["gemma2"]
    else:
        path = write_model(tmp_path / "default.gguf", **{**MODELS["gemma2"], "softcap": None, "attn_softcap": None})
    model = forward.load(path)
    final, attn = caps or (30.0, 50.0)
    assert (model.hp["softcap"], model.hp["attn_softcap"]) == (final, attn)
    tokens = np.random.default_rng(1).integers(0, 512, 96)
    positions = np.arange(96)
    llama = llama_cpp_logits(path, tokens, positions)
    tolerance = 2e-3 * np.abs(llama).max()
    assert np.abs(llama - model.logits(tokens, positions)).max() < tolerance
    for cap in ("softcap", "attn_softcap"):
        kept, model.hp[cap] = model.hp[cap], 0.0
        try:
            uncapped = model.logits(tokens, positions)
        finally:
            model.hp[cap] = kept
        assert np.abs(llama - uncapped).max() > 20 * tolerance, (cap, np.abs(llama - uncapped).max() / tolerance)


def test_gemma2_window_defaults_to_4096(q8, tmp_path):
    """models/gemma2.cpp: n_swa = 4096 unless attention.sliding_window says otherwise; period 2.
    At verify's positions (queries at 2048..8192, the far context at 0..15) the window layer
    sees the far context only from the queries below 4096 + 16: a reference without the window,
    or with another, is far off llama.cpp."""
    keyed = read_view(write_model(tmp_path / "keyed.gguf", arch="gemma2", sliding_window=64))
    assert keyed.sliding_window == 64 and "gemma2.attention.sliding_window" not in keyed.defaulted
    path = q8["gemma2"]
    model = forward.load(path)
    assert model.rope.window_layers == (0,) and model.rope.sliding_window == 4096
    assert "gemma2.attention.sliding_window" in model.rope.defaulted
    claimed = model.file_scaling()
    layout = verify.make_layout(512, 16, verify.default_position(claimed, model.rope))
    assert layout.query_positions.min() < 4096 < layout.query_positions.max()
    llama = verify.llama_logits(path, None, layout)
    kls = {}
    for window in (4096, 0, 2048, 6144):  # 0: no window at all
        model.hp["n_swa"] = window
        try:
            exact, rounded = model.run(layout.tokens, layout.positions, [(claimed, False), (claimed, True)],
                                       layout.visible, rows=layout.queries)
        finally:
            model.hp["n_swa"] = 4096
        kls[window] = verify.compare(exact, llama).kl / verify.compare(exact, rounded).kl
    assert kls[4096] < 3 and min(kls[0], kls[2048], kls[6144]) > 30, kls


@pytest.mark.parametrize("method", ["linear", "yarn"])
def test_gemma2_gguf_set_scales_the_window_layers(tmp_path, monkeypatch, method):
    """models/gemma2.cpp: the window layers take the file's base and scale as loaded, so after
    `pyntk gguf-set` they run the scaling too (ext_factor, attn_factor, n_ctx_orig are the
    context's). The window here (65536) reaches the far context, so their angles count: a
    reference that keeps them unscaled fails."""
    path = write_model(tmp_path / "g2.gguf", weights="Q8_0", **MODELS["gemma2"], sliding_window=1 << 16)
    apply(plan_set(path, method=method, factor=4))
    model = forward.load(path)
    claimed = model.file_scaling()
    assert claimed.method == method and claimed.factor == 4
    window, glob = model.rotations(claimed, 64)
    assert window == glob == forward.model.LayerRotation(claimed, 1.0, None)
    report = verify.verify(path, tokens=16)
    assert report.passed and report.layers.startswith("2 of 2 layers run it"), report

    def unscaled(scaling, glob, layer):
        multiplier = scaling.attn_factor if scaling.method == "yarn" else 1.0
        return forward.model.LayerRotation(RopeScaling(base=layer.freq_base, dims=layer.dims), multiplier, None)

    monkeypatch.setattr(forward.model, "window_rotation", unscaled)
    report = verify.verify(path, tokens=16)
    assert not report.passed and report.measured.kl > 2 * report.thresholds["kl"], report
