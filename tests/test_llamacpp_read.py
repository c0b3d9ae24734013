"""How pyntk.llamacpp reads a file, rule by rule, against hand-derived values from llama.cpp's source
(the rule each case checks is named; /tmp-free: every file is generated here)."""

import ggufs
import pytest

from pyntk import llamacpp
from pyntk.cli import main
from pyntk.edit import plan_set
from pyntk.errors import PyntkError
from pyntk.llamacpp import read
from pyntk.scaling import RopeScaling


def write(tmp_path, arch, n_layer=6, **overrides):
    """A small model of any architecture: llama's keys renamed (types follow the key names)."""
    kv = {k.replace("llama.", f"{arch}."): v
          for k, v in ggufs.model_kv("llama", n_layer=n_layer, context_length=8192).items()}
    kv["general.architecture"] = arch
    kv.update(overrides)
    return ggufs.write_gguf(tmp_path / f"{arch}.gguf", {k: v for k, v in kv.items() if v is not ggufs.ABSENT})


@pytest.mark.parametrize("arch, mode", [("llama", "normal"), ("qwen2", "neox"), ("qwen3", "neox"),
                                        ("gemma3", "neox"), ("phi3", "neox"), ("cohere2", "normal"),
                                        ("granite", "normal"), ("olmo2", "neox"), ("some-new-arch", None)])
def test_rope_mode_per_architecture(tmp_path, arch, mode):
    # model.cpp llama_model_rope_type
    assert read(write(tmp_path, arch)).mode == mode


def test_gemma3_window_layers_and_default_base(tmp_path):
    # models/gemma3.cpp: window layers only with sliding_window > 0, period 6, base 10000 when the
    # key is absent; llama-hparams.cpp set_swa_pattern: the last of each 6 is global
    view = read(write(tmp_path, "gemma3", n_layer=12, **{"gemma3.attention.sliding_window": 512}))
    assert view.window_layers == (0, 1, 2, 3, 4, 6, 7, 8, 9, 10) and view.sliding_window == 512
    assert view.base_swa == 10000.0 and "gemma3.rope.freq_base_swa" in view.defaulted
    ntk = llamacpp.to_llama(RopeScaling(method="ntk", alpha=4, base=1e4, dims=16))
    layers = view.layer_ropes(ntk, in_file=True)
    assert [(la.freq_base, la.freq_scale) for la in layers if la.window] == [(10000.0, 1.0)] * 10
    assert [la.index for la in layers if la.freq_base == ntk.freq_base] == [5, 11]
    assert read(write(tmp_path, "gemma3", n_layer=12)).window_layers == ()  # no sliding_window key
    pattern = read(write(tmp_path, "gemma3", n_layer=4, **{"gemma3.attention.sliding_window": 512,
                                                           "gemma3.attention.sliding_window_pattern": [True, False, True, False]}))
    assert pattern.window_layers == (0, 2)  # model.cpp load_swa_pattern: an array wins


def test_gemma2_window_layers_follow_the_file_base_not_the_runtime(tmp_path):
    # models/gemma2.cpp: rope_freq_base_train_swa = rope.freq_base as loaded, scale likewise
    view = read(write(tmp_path, "gemma2", n_layer=4))
    assert view.window_layers == (0, 2)
    ntk = llamacpp.to_llama(RopeScaling(method="ntk", alpha=4, base=1e4, dims=16))
    in_file = view.layer_ropes(ntk, in_file=True)
    at_runtime = view.layer_ropes(ntk)
    assert {la.freq_base for la in in_file} == {ntk.freq_base}
    assert [la.freq_base for la in at_runtime] == [1e4, ntk.freq_base, 1e4, ntk.freq_base]
    # ... unless the file has rope.freq_base_swa (read with the file's base as its default)
    own = read(write(tmp_path, "gemma2", n_layer=4, **{"gemma2.rope.freq_base_swa": 5e5}))
    assert [la.freq_base for la in own.layer_ropes(ntk, in_file=True)] == [5e5, ntk.freq_base] * 2
    assert own.base_swa == 5e5 and "gemma2.rope.freq_base_swa" not in own.defaulted


def test_cohere2_ropes_only_its_window_layers(tmp_path):
    # models/cohere2.cpp: global layers (il % 4 == 3) have no RoPE; window layers take the runtime base
    view = read(write(tmp_path, "cohere2", n_layer=8))
    assert [la.index for la in view.layer_ropes()] == [0, 1, 2, 4, 5, 6]


def test_granite_finetuned_is_a_rope_switch(tmp_path):
    # models/granite.cpp: rope.scaling.finetuned defaults to true and false switches RoPE off
    assert read(write(tmp_path, "granite")).finetuned is False
    with pytest.raises(PyntkError, match="switches RoPE off"):
        read(write(tmp_path, "granite", **{"granite.rope.scaling.finetuned": False}))


def test_yarn_keys_count_only_where_llama_cpp_reads_them(tmp_path):
    beta = {"rope.scaling.yarn_beta_fast": (16.0, ggufs.GGUFValueType.FLOAT32)}
    mistral3 = write(tmp_path, "mistral3", **{f"mistral3.{k}": v for k, v in beta.items()})
    assert read(mistral3).yarn_keys == ("mistral3.rope.scaling.yarn_beta_fast",)
    with pytest.raises(PyntkError, match="yarn_beta_fast"):
        plan_set(mistral3, method="yarn", factor=2)
    assert read(write(tmp_path, "llama", **{f"llama.{k}": v for k, v in beta.items()})).yarn_keys == ()


def test_legacy_scale_linear_and_defaults(tmp_path):
    # model.cpp load_hparams: rope.scaling.factor, else rope.scale_linear; type linear by default
    view = read(write(tmp_path, "llama", **{"llama.rope.scale_linear": 2.0, "llama.rope.freq_base": ggufs.ABSENT}))
    assert (view.scaling_type, view.factor, view.base) == ("linear", 2.0, 10000.0)
    assert view.rope().freq_scale == 0.5 and view.scaling().method == "linear"


@pytest.mark.parametrize("arch, row", [
    ("gemma2", "base 10000, scale 0.25  (the file's values as loaded: a gguf-set edit reaches them"),
    ("gemma3", "base 10000, scale 1  (default)  (their own: no scaling reaches them"),
    ("cohere2", "base 10000, scale 0.25  (the run's base and scale, as the global layers')"),
    ("olmo2", "base 10000, scale 1  (the run's base, scale 1)"),
])
def test_info_says_where_window_layers_take_their_rope(tmp_path, capsys, arch, row):
    # a file with linear factor 4: which window layers follow it is each architecture's rule
    path = write(tmp_path, arch, n_layer=8, **{f"{arch}.attention.sliding_window": 512,
                                               f"{arch}.rope.scaling.type": "linear",
                                               f"{arch}.rope.scaling.factor": 4.0})
    assert main(["info", str(path)]) == 0
    assert f"window layers' rope  {row}" in capsys.readouterr().out
