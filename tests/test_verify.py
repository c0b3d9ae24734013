"""pyntk verify: llama.cpp against the numpy reference, on tiny generated models and SmolLM2.

Both directions of sensitivity: the right scaling passes, a base off by 1%, a swapped method
or a missing YaRN temperature fails.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from tinymodels import write_model

from pyntk import PyntkError, forward, verify
from pyntk.cli import main
from pyntk.llamacpp import read as read_view
from pyntk.scaling import RopeScaling

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llama


def scalings(info):
    """(name, what llama.cpp runs, what the reference assumes, passes?) for a model."""
    b, d, l0 = info.base, info.dims, info.original_context
    none = RopeScaling(base=b, dims=d)
    linear = RopeScaling("linear", base=b, dims=d, factor=4)
    ntk = RopeScaling("ntk", base=b, dims=d, alpha=4)
    yarn = RopeScaling("yarn", base=b, dims=d, factor=4, original_context=l0)
    by_parts = RopeScaling("ntk-by-parts", base=b, dims=d, factor=4, original_context=l0)
    return [
        ("file", None, None, True),
        ("none", none, none, True),
        ("linear", linear, linear, True),
        ("ntk", ntk, ntk, True),
        ("yarn", yarn, yarn, True),
        ("base+1%", none.replace(base=b * 1.01), none, False),
        ("ntk-base-1%", ntk.replace(base=b * 0.99), ntk, False),
        ("yarn-base+1%", yarn.replace(base=b * 1.01), yarn, False),
        ("linear-as-yarn", linear, yarn, False),
        ("ntk-as-linear", ntk, linear, False),
        ("yarn-without-temperature", yarn, by_parts, False),
    ]


CASES = [c[0] for c in scalings(SimpleNamespace(base=1e4, dims=64, original_context=4096))]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    return {w: write_model(d / f"{w}.gguf", weights=w) for w in ("F32", "Q4_K")}


def check(path, name):
    case = {c[0]: c for c in scalings(read_view(path))}[name]
    report = verify.verify(path, case[1], reference=case[2])
    assert report.passed == case[3], report
    return report


@pytest.mark.parametrize("weights", ["F32", "Q4_K"])
@pytest.mark.parametrize("name", CASES)
def test_tiny_models_pass_the_right_scaling_and_fail_wrong_ones(models, weights, name):
    report = check(models[weights], name)
    if not report.passed:  # clearly outside, not at the edge
        assert report.measured.kl > 2 * report.thresholds["kl"]


@pytest.mark.model
@pytest.mark.parametrize("name", ["file", "linear", "ntk", "yarn", "base+1%", "yarn-base+1%",
                                  "linear-as-yarn", "yarn-without-temperature"])
def test_smollm2_passes_the_right_scaling_and_fails_wrong_ones(model_path, name):
    report = check(model_path, name)
    assert report.rounding == "Q8_0, Q8_1"  # Q8_0 embeddings and Q4_1 matrices: 8-bit blocks of 32
    assert report.positions[1] >= 16384  # thousands of positions away, beyond the training context


def test_float32_model_matches_llama_cpp_to_float32_precision(models):
    from pyntk.llama import Session

    path = models["F32"]
    tokens = np.random.default_rng(1).integers(0, 512, 24)
    with Session(path, n_ctx=32) as session:
        llama = session.decode(tokens, np.arange(24))
    reference = forward.load(path).logits(tokens, np.arange(24))
    scale = np.abs(reference).max()
    assert np.abs(llama - reference).max() < 2e-5 * scale  # a few float32 roundings of the logits
    # far out, llama.cpp's float32 angles add their error: still tiny next to any scaling effect
    report = verify.verify(path)
    assert report.passed and report.measured.mean_abs < 1e-2 and report.rounding == "none (F32)"


@pytest.mark.parametrize("weights", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_K", "Q6_K"])
def test_every_weight_type_passes(tmp_path, weights):
    report = verify.verify(write_model(tmp_path / "m.gguf", weights=weights), tokens=16)
    assert report.passed, report


@pytest.mark.parametrize("options", [
    dict(scaling_type="yarn", factor=4.0, original_context=4096, context=16384),
    dict(scaling_type="linear", factor=2.0),
    dict(base=5e5, tied=False, biases=True),
    dict(freq_factors=np.linspace(1.0, 8.0, 32)),
], ids=["yarn-file", "linear-file", "untied-biases", "rope-freqs"])
def test_files_with_their_own_settings_pass(tmp_path, options):
    path = write_model(tmp_path / "m.gguf", weights="Q8_0", **options)
    report = verify.verify(path, tokens=16)
    assert report.passed and report.file_settings, report
    if "scaling_type" in options:
        assert report.scaling.startswith(options["scaling_type"])


def test_layout_puts_queries_far_from_the_context():
    layout = verify.make_layout(100, 4, 1000, bos=7)
    assert layout.tokens[0] == 7 and layout.context == verify.CONTEXT_TOKENS
    np.testing.assert_array_equal(layout.query_positions, [250, 500, 750, 1000])
    np.testing.assert_array_equal(layout.positions[16:20], [249, 499, 749, 999])  # the bridges
    query = layout.queries[1]
    assert layout.visible[query].sum() == 16 + 2  # the context, its bridge, itself
    with pytest.raises(ValueError, match="--tokens"):
        verify.make_layout(100, 256, 1000)
    with pytest.raises(ValueError, match="--position"):
        verify.make_layout(100, 4, 60)


def test_compare_metrics():
    a = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    same = verify.compare(a, a)
    assert same.max_abs == same.mean_abs == same.kl == 0 and same.top1 == 1
    other = verify.compare(a, np.array([[0.0, 1.0, 2.0], [0.0, 2.0, 0.0]]))
    assert other.top1 == 0.5 and other.kl > 0 and other.max_abs == 2 and other.mean_abs == 0.5


def test_llama_cpp_refuses_a_gap_in_a_sequence(models):
    from pyntk.llama import Session

    with Session(models["F32"], n_ctx=8) as session:
        session.decode([1, 2], [0, 1])
        with pytest.raises(PyntkError, match="refused"):
            session.decode([3], [5])


def test_llama_kwargs(models, tmp_path):
    from pyntk.llama import llama_kwargs

    info = read_view(models["F32"])
    yarn = llama_kwargs(RopeScaling("yarn", factor=4, original_context=2048), info)
    assert yarn["rope_scaling_type"] == 2 and yarn["rope_freq_scale"] == 0.25
    assert yarn["yarn_orig_ctx"] == 2048 and "kv_overrides" not in yarn
    by_parts = llama_kwargs(RopeScaling("ntk-by-parts", factor=4, original_context=2048), info)
    attn = by_parts["kv_overrides"]["llama.rope.scaling.attn_factor"]
    assert attn * (1 + 0.1 * np.log(4)) == pytest.approx(1.0)
    ntk = llama_kwargs(RopeScaling("ntk", alpha=4), info)
    assert ntk["rope_freq_base"] == pytest.approx(RopeScaling("ntk", alpha=4).ntk_base)
    # a file's own attn_factor would multiply any other method's cos and sin in llama.cpp
    own = read_view(write_model(tmp_path / "attn.gguf", attn_factor=1.2))
    linear = llama_kwargs(RopeScaling("linear", factor=2), own)
    assert linear["kv_overrides"] == {"llama.rope.scaling.attn_factor": 1.0}
    with pytest.raises(PyntkError, match="no runtime setting"):
        llama_kwargs(RopeScaling("dynamic", factor=2, original_context=2048), info)


def test_cli_json_and_exit_status(models, capsys, monkeypatch):
    path = str(models["Q4_K"])
    assert main(["verify", path, "--json", "--tokens", "8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] and data["tokens"] == 8 and data["file_settings"]
    assert set(data["measured"]) == {"max_abs", "mean_abs", "kl", "top1"}
    assert main(["verify", path, "--method", "yarn", "--factor", "2"]) == 0
    out = capsys.readouterr().out
    assert "yarn factor=2" in out and "set at run time" in out and out.strip().endswith("s)")
    # llama.cpp computing something else makes the check fail with status 1
    real = verify.llama_logits
    monkeypatch.setattr(verify, "llama_logits", lambda *a, **k: real(*a, **k) * 1.05)
    assert main(["verify", path, "--tokens", "8"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_errors_are_one_line(models, tmp_path, capsys):
    from gguf import GGUFWriter

    other = tmp_path / "starcoder2.gguf"
    w = GGUFWriter(str(other), "starcoder2")
    for add, value in ((w.add_context_length, 4096), (w.add_embedding_length, 64), (w.add_head_count, 4),
                       (w.add_block_count, 1)):
        add(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert main(["verify", str(other)]) == 1
    assert capsys.readouterr().err == (
        "pyntk: error: " f"{other}: architecture 'starcoder2' is not supported by pyntk's reference forward "
        "pass (supported: llama, qwen2, qwen3, gemma2, gemma3, phi3)\n")
    path = str(models["F32"])
    assert main(["verify", path, "--tokens", "300"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["verify", path, "--position", "10"]) == 1
    assert "--position must be from 68" in capsys.readouterr().err
    assert main(["verify", path, "--method", "dynamic", "--factor", "2"]) == 1
    assert "no runtime setting" in capsys.readouterr().err


def test_kernel_check(models, capsys):
    path = str(models["F32"])
    for method in ([], ["--method", "yarn", "--factor", "8"]):
        assert main(["verify", path, "--kernel", "--json", *method]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["passed"] and 0 < data["bound_ratio"] <= 1
        assert data["pyntk_vs_exact"] < data["ggml_vs_exact"]  # pyntk's angles are double
    assert main(["verify", path, "--kernel"]) == 0
    assert "PASS" in capsys.readouterr().out


GEMMA_EDITS = {"unscaled": ([], "none, base 1e+06"), "ntk": (["--alpha", "4"], "none, base 4.04"),
               "yarn": (["--method", "yarn", "--factor", "2"], "yarn factor=2 original_context=32768"),
               "linear": (["--method", "linear", "--factor", "2"], "linear factor=2")}


@pytest.mark.gemma
@pytest.mark.parametrize("edit", GEMMA_EDITS)
def test_gemma3_passes_its_own_settings_after_gguf_set(gemma_path, tmp_path, capsys, edit):
    import shutil

    args, describes = GEMMA_EDITS[edit]
    path = gemma_path
    if args:
        path = tmp_path / gemma_path.name
        shutil.copy(gemma_path, path)
        assert main(["gguf-set", *args, "--yes", str(path)]) == 0
        capsys.readouterr()
    report = verify.verify(path)
    assert report.passed and report.file_settings, report
    assert report.scaling.startswith(describes)  # ntk: the new base 4.04e6 (alpha 4, d 256)
    assert report.layers.startswith("3 of 18 layers run it; 15 sliding-window layers (window 512 "
                                    "tokens) keep base 10000, unscaled")
    assert report.rounding == "Q8_0, Q8_K"  # Q5_0/Q8_0 and Q4_K/Q6_K matrices


@pytest.mark.gemma
@pytest.mark.parametrize("factor", [1.01, 0.99])
def test_gemma3_fails_a_1_percent_wrong_base(gemma_path, factor):
    claimed = RopeScaling(base=1e6, dims=256)
    report = verify.verify(gemma_path, claimed.replace(base=1e6 * factor), reference=claimed)
    assert not report.passed, report
    # the neighbour llama.cpp actually ran is closer to it than the claim is
    assert report.neighbours[f"base x{factor:g}"]["kl"] < 0.5 * report.measured.kl
