"""pyntk.forward, the numpy reference network, without llama.cpp: against Hugging Face
transformers' Llama, and its own properties."""

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, quants
from tinymodels import write_model

from pyntk import PyntkError, forward
from pyntk.scaling import RopeScaling


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("forward") / "tiny.gguf")


def _tokens(rng, n, vocab=512):
    return rng.integers(0, vocab, n)


def _hf_model(path, base):
    """transformers' LlamaForCausalLM (float64) with the GGUF file's weights, read by gguf-py."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    t = {x.name: np.array(x.data, dtype=np.float64) for x in GGUFReader(path).tensors}
    n_embd, n_ff = t["token_embd.weight"].shape[1], t["blk.0.ffn_up.weight"].shape[0]
    n_head, head_dim = 4, 64
    n_head_kv = t["blk.0.attn_k.weight"].shape[0] // head_dim
    n_layer = sum(name.endswith("attn_norm.weight") for name in t)
    bias = "blk.0.attn_q.bias" in t
    config = transformers.LlamaConfig(
        vocab_size=t["token_embd.weight"].shape[0], hidden_size=n_embd, intermediate_size=n_ff,
        num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head_kv,
        head_dim=head_dim, rms_norm_eps=1e-5, tie_word_embeddings="output.weight" not in t,
        attention_bias=bias, mlp_bias=bias, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": base})
    model = transformers.LlamaForCausalLM(config).to(torch.float64).eval()

    def halves(w, heads):
        # GGUF keeps a head's rotary pairs adjacent (x[2j], x[2j+1]); transformers keeps them
        # half a head apart (x[j], x[j + d/2]). Undo the converter's row order.
        return w.reshape(heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    hf = {"model.embed_tokens.weight": t["token_embd.weight"], "model.norm.weight": t["output_norm.weight"]}
    if "output.weight" in t:
        hf["lm_head.weight"] = t["output.weight"]
    for i in range(n_layer):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
        for ours, theirs in names.items():
            for kind in ("weight", "bias") if bias else ("weight",):
                w = t[f"{b}{ours}.{kind}"]
                if ours in ("attn_q", "attn_k"):
                    w = halves(w, n_head if ours == "attn_q" else n_head_kv)
                hf[f"{h}{theirs}.{kind}"] = w
        hf[h + "input_layernorm.weight"] = t[b + "attn_norm.weight"]
        hf[h + "post_attention_layernorm.weight"] = t[b + "ffn_norm.weight"]
    missing, unexpected = model.load_state_dict({k: torch.tensor(v) for k, v in hf.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return torch, model


@pytest.mark.parametrize("options", [dict(), dict(tied=False, biases=True, n_head_kv=1)],
                         ids=["tied", "untied-biases-mqa"])
def test_matches_transformers_llama(tmp_path, rng, options):
    path = write_model(tmp_path / "m.gguf", base=5e5, **options)
    torch, hf = _hf_model(str(path), 5e5)
    tokens = _tokens(rng, 12)
    positions = np.array([0, 1, 2, 3, 40, 41, 42, 300, 301, 302, 800, 801])
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(tokens)[None],
                      position_ids=torch.tensor(positions)[None]).logits[0].numpy()
    got = forward.load(path).logits(tokens, positions)
    # transformers forms its rotary angles in float32 (~1e-4 rad of error at position 800)
    np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())
    near = positions < 4
    # matrix products in float32 on both sides
    np.testing.assert_allclose(got[near], expected[near], atol=1e-5 * np.abs(expected).max())


SHIFTABLE = [RopeScaling(dims=64), RopeScaling("linear", dims=64, factor=4),
             RopeScaling("ntk", dims=64, alpha=8),
             RopeScaling("yarn", dims=64, factor=8, original_context=1024, attn_factor=1.1)]


@pytest.mark.parametrize("scaling", SHIFTABLE, ids=[s.method for s in SHIFTABLE])
def test_only_distances_between_tokens_matter(tiny, rng, scaling):
    model = forward.load(tiny)
    tokens, positions = _tokens(rng, 9), np.sort(rng.choice(3000, 9, replace=False))
    here = model.logits(tokens, positions, scaling)
    there = model.logits(tokens, positions + 12345, scaling)
    np.testing.assert_allclose(there, here, atol=1e-7 * np.abs(here).max())
    spread = model.logits(tokens, positions * 2, scaling)
    assert np.abs(spread - here).max() > 1e-2 * np.abs(here).max()


def test_rope_freqs_divide_the_angles(tmp_path, rng):
    # llama.cpp's rope_factors: a factor of 2 on every pair is linear scaling by 2
    plain = forward.load(write_model(tmp_path / "plain.gguf"))
    halved = forward.load(write_model(tmp_path / "ff.gguf", freq_factors=np.full(32, 2.0)))
    tokens, positions = _tokens(rng, 6), np.array([0, 1, 500, 501, 2000, 2001])
    linear = plain.rope.scaling().replace(method="linear", factor=2.0)
    np.testing.assert_allclose(halved.logits(tokens, positions), plain.logits(tokens, positions, linear),
                               rtol=0, atol=1e-9)


def test_visible_defaults_to_llama_cpp_causal_mask(tiny, rng):
    model = forward.load(tiny)
    tokens, positions = _tokens(rng, 5), np.array([3, 7, 7, 100, 250])
    causal = positions[None, :] <= positions[:, None]  # equal positions see each other
    np.testing.assert_array_equal(model.logits(tokens, positions),
                                  model.logits(tokens, positions, visible=causal))
    alone = np.eye(5, dtype=bool)
    single = np.concatenate([model.logits([t], [p]) for t, p in zip(tokens, positions)])
    np.testing.assert_allclose(model.logits(tokens, positions, visible=alone), single,
                               atol=1e-5 * np.abs(single).max())  # float32 products
    full = model.logits(tokens, positions)
    np.testing.assert_allclose(model.logits(tokens, positions, rows=[4, 1]), full[[4, 1]],
                               atol=1e-5 * np.abs(full).max())


def test_bad_inputs_are_value_errors(tiny):
    model = forward.load(tiny)
    with pytest.raises(ValueError, match="token ids"):
        model.logits([512], [0])
    with pytest.raises(ValueError, match="positions must be >= 0"):
        model.logits([1], [-1])
    with pytest.raises(ValueError, match="same length"):
        model.logits([1, 2], [0])
    with pytest.raises(ValueError, match="true diagonal"):
        model.logits([1, 2], [0, 1], visible=np.zeros((2, 2), bool))
    with pytest.raises(PyntkError, match="rotates 32 dims"):
        model.logits([1], [0], RopeScaling(dims=32))


def test_weights_are_cached_until_the_file_changes(tmp_path):
    path = write_model(tmp_path / "m.gguf")
    first = forward.load(path)
    assert forward.load(str(path)) is first
    write_model(path, seed=1)
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
    assert forward.load(path) is not first


def test_refuses_networks_it_does_not_compute(tmp_path):
    moe = write_model(tmp_path / "m.gguf", extra_tensors={"blk.0.ffn_gate_inp.weight": np.zeros((4, 256))})
    with pytest.raises(PyntkError, match="ffn_gate_inp.*plain llama"):
        forward.load(moe)
    with pytest.raises(PyntkError, match="no such file"):
        forward.load(tmp_path / "missing.gguf")
    from ggufs import write_model as write_gguf

    with pytest.raises(PyntkError, match="tensor 'blk.0.attn_norm.weight' is missing"):
        forward.load(write_gguf(tmp_path / "metadata-only.gguf", "llama", n_embd=256))


# Writes a float32 model, runs the reference on it in a fresh process and prints the process's
# peak resident memory before and after the run (VmHWM: this process's own pages only).
PEAK = r"""
import sys
import numpy as np
from pyntk import forward

def peak():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))

model = forward.load(sys.argv[1])
before = peak()
logits = model.logits(np.arange(48) * 7, np.arange(48) * 100)
print(before, peak(), logits.shape[1])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
def test_memory_stays_about_one_layer(tmp_path):
    """A model whose float32 weights take 268 MB runs in 70 MB more than the process held before:
    one layer (17 MB), one block of the output matrix (32 MB), the reads in flight. Holding every
    layer instead measured 257 MB."""
    import subprocess
    import sys

    path = write_model(tmp_path / "big.gguf", n_layer=12, n_embd=512, n_head=8, n_head_kv=8, n_ff=2048,
                       n_vocab=32768)
    weights = os.path.getsize(path)
    assert weights > 260e6
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    before, after, vocab = map(int, out.stdout.split())
    assert vocab == 32768
    assert after - before < weights / 2, (after - before) / 1e6


@pytest.mark.llama
@pytest.mark.parametrize("weights", ["F16", "BF16", "Q8_0", "Q4_1", "Q4_K", "Q6_K"])
def test_dequantizes_as_gguf_py_does(tmp_path, weights):
    """forward's chunked reads give gguf-py's quants.dequantize bit for bit."""
    from gguf import GGUFReader

    from pyntk.forward.weights import CHUNK_VALUES, Weights
    from pyntk.gguf_file import GGUFFile

    path = write_model(tmp_path / "m.gguf", weights=weights, n_vocab=8192)  # 2 chunks of embeddings
    w = Weights(GGUFFile(str(path)))
    expected = {t.name: quants.dequantize(t.data, t.tensor_type) for t in GGUFReader(str(path)).tensors}
    for name, values in expected.items():
        np.testing.assert_array_equal(w.read(name), values.reshape(w.read(name).shape))
    embeddings = expected["token_embd.weight"]
    assert w.rows("token_embd.weight") * 256 > CHUNK_VALUES
    np.testing.assert_array_equal(w.read("token_embd.weight", 1000, 3000), embeddings[1000:3000])
    np.testing.assert_array_equal(w.take("token_embd.weight", [5, 8191, 5]), embeddings[[5, 8191, 5]])


def test_round_input_matches_ggml_formats(rng):
    x = rng.standard_normal((3, 512)) * np.exp(rng.standard_normal((3, 512)))
    x32 = x.astype(np.float32)
    # gguf-py writes BF16 and Q8_0 the way ggml does; Q8_0's scale only differs in round-half
    bf16 = quants.dequantize(quants.quantize(x32, GGMLQuantizationType.BF16), GGMLQuantizationType.BF16)
    np.testing.assert_array_equal(forward.round_input(x, "BF16"), bf16)
    q8 = quants.dequantize(quants.quantize(x32, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    assert np.mean(forward.round_input(x, "Q8_0") != q8) < 1e-3
    np.testing.assert_array_equal(forward.round_input(x, "F16"), x32.astype(np.float16))
    assert forward.round_input(x, None) is x
    # Q8_K: blocks of 256, the largest magnitude kept exactly, every value within half a step
    k = forward.round_input(x, "Q8_K").reshape(3, 2, 256)
    blocks = x32.reshape(3, 2, 256).astype(np.float64)
    step = np.abs(blocks).max(axis=-1, keepdims=True) / 127
    assert np.all(np.abs(k - blocks) <= step * 0.5 + 1e-6 * step)
    assert np.allclose(np.abs(k).max(axis=-1), np.abs(blocks).max(axis=-1), rtol=1e-6)


def test_ggml_rounding_perturbs_a_little(tmp_path, rng):
    model = forward.load(write_model(tmp_path / "q.gguf"))
    tokens, positions = _tokens(rng, 8), np.arange(8) * 1000
    exact = model.logits(tokens, positions)
    rounded = model.logits(tokens, positions, ggml_rounding=True)
    # float32 weights: only the float32 angle error remains, small at these positions
    assert 0 < np.abs(rounded - exact).max() < 1e-2 * np.abs(exact).max()
    near = model.logits(tokens[:3], [0, 1, 2], ggml_rounding=True)
    np.testing.assert_allclose(near, model.logits(tokens[:3], [0, 1, 2]), atol=1e-4)
