"""The llama.cpp contract (pyntk.llamacpp): one mapping, the same parameters from every command.

One table of cases drives `pyntk args` (its flags, --override-kv form and llama-cpp-python
kwargs), the llama-cpp-python bridge, the ggml oracle's arguments and the values gguf-set writes
(read back with gguf-py's own reader); each is reduced to what llama.cpp's context runs, by the
rules of llama-context.cpp written out here, and compared with hand-derived values.
"""

import json
import math
import shutil
import struct

import pytest
import tinymodels
from gguf import GGUFReader

from pyntk import llamacpp
from pyntk.cli import main
from pyntk.edit import plan_set
from pyntk.ggml import ggml_args
from pyntk.llama import llama_kwargs
from pyntk.llamacpp import read
from pyntk.scaling import RopeScaling
from pyntk.writer import apply


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


D, B, L0 = 64, 10000.0, 4096  # the tiny model's head size, base and training context
# (gguf-set/args options, the same scaling, and what llama.cpp must run, by hand:
#  (type, freq_base, freq_scale, ext_factor, attn_factor, n_ctx_orig, beta_fast, beta_slow))
CASES = {
    "ntk": (dict(alpha=4), RopeScaling(method="ntk", alpha=4, base=B, dims=D),
            ("none", f32(B * 4 ** (64 / 62)), 1.0, 0.0, 1.0, L0, 32.0, 1.0)),
    "linear": (dict(method="linear", factor=4), RopeScaling(method="linear", factor=4, base=B, dims=D),
               ("linear", B, 0.25, 0.0, 1.0, L0, 32.0, 1.0)),
    "yarn": (dict(method="yarn", factor=4), RopeScaling(method="yarn", factor=4, base=B, dims=D, original_context=L0),
             ("yarn", B, 0.25, 1.0, 1.0, L0, 32.0, 1.0)),
    "yarn-2.5": (dict(method="yarn", factor=2.5),
                 RopeScaling(method="yarn", factor=2.5, base=B, dims=D, original_context=L0),
                 ("yarn", B, f32(1 / f32(2.5)), 1.0, 1.0, L0, 32.0, 1.0)),
    "yarn-attn": (dict(method="yarn", factor=4, attn_factor=0.9),
                  RopeScaling(method="yarn", factor=4, base=B, dims=D, original_context=L0, attn_factor=0.9),
                  ("yarn", B, 0.25, 1.0, f32(0.9), L0, 32.0, 1.0)),
    # the temperature 1 + 0.1 ln 4 cancelled through the file key
    "ntk-by-parts": (dict(method="ntk-by-parts", factor=4),
                     RopeScaling(method="ntk-by-parts", factor=4, base=B, dims=D, original_context=L0),
                     ("yarn", B, 0.25, 1.0, f32(1 / (1 + 0.1 * math.log(4))), L0, 32.0, 1.0)),
}


def runs(kind, base, scale, ext=None, attn=1.0, orig=L0, beta_fast=32.0, beta_slow=1.0):
    """What llama-context.cpp makes of the settings: type none forces freq_scale 1, an unset
    ext_factor is 1 for yarn only; n_ctx_orig and the betas matter only when ext_factor != 0."""
    scale = 1.0 if kind == "none" else f32(scale)
    ext = (1.0 if kind == "yarn" else 0.0) if ext is None else ext
    return (kind, f32(base), scale, ext, f32(attn), orig, beta_fast, beta_slow)


def from_file_values(values, arch="llama"):
    factor = values.get(f"{arch}.rope.scaling.factor", 0.0) or 1.0
    return runs(values.get(f"{arch}.rope.scaling.type", "linear"), values.get(f"{arch}.rope.freq_base", 1e4),
                1 / f32(factor), attn=values.get(f"{arch}.rope.scaling.attn_factor", 1.0),
                orig=values.get(f"{arch}.rope.scaling.original_context_length", L0))


def from_flags(flags):
    opts, overrides = {}, {}
    for name, value in zip(flags[::2], flags[1::2]):
        if name == "--override-kv":
            k, typed = value.split("=", 1)
            t, v = typed.split(":", 1)
            overrides[k] = {"int": int, "float": float, "str": str}[t](v)
        else:
            opts[name] = value
    if "--rope-scaling" not in opts:  # the --override-kv form: the file values
        return from_file_values(overrides)
    # common/arg.cpp: --rope-scale N sets rope_freq_scale = 1/N
    return runs(opts["--rope-scaling"], float(opts["--rope-freq-base"]), 1 / f32(float(opts["--rope-scale"])),
                float(opts["--yarn-ext-factor"]), overrides.get("llama.rope.scaling.attn_factor", 1.0),
                int(opts.get("--yarn-orig-ctx", L0)), float(opts.get("--yarn-beta-fast", 32)),
                float(opts.get("--yarn-beta-slow", 1)))


def from_kwargs(kw, file_attn=1.0):
    kind = ("none", "linear", "yarn")[kw["rope_scaling_type"]]
    return runs(kind, kw["rope_freq_base"], kw["rope_freq_scale"], kw["yarn_ext_factor"],
                kw.get("kv_overrides", {}).get("llama.rope.scaling.attn_factor", file_attn),
                kw.get("yarn_orig_ctx", L0), kw["yarn_beta_fast"], kw["yarn_beta_slow"])


def from_ggml(args):
    return (f32(args["freq_base"]), f32(args["freq_scale"]), args["ext_factor"], f32(args["attn_factor"]),
            args["n_ctx_orig"] if args["ext_factor"] else L0, args["beta_fast"], args["beta_slow"])


def gguf_py_values(path):
    """The file's llama.* values through gguf-py's reader, not pyntk's."""
    out = {}
    for name, field in GGUFReader(str(path)).fields.items():
        if name.startswith("llama."):
            value = field.contents()
            out[name] = value
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tinymodels.write_model(tmp_path_factory.mktemp("tiny") / "m.gguf", context=L0)


@pytest.mark.parametrize("name", CASES)
def test_every_command_gives_the_same_llama_cpp_parameters(name, tiny, tmp_path, capsys):
    options, scaling, expected = CASES[name]
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    assert main(["args", str(tiny), "--json", *argv]) == 0
    settings = json.loads(capsys.readouterr().out)
    edited = tmp_path / "m.gguf"
    shutil.copy(tiny, edited)
    apply(plan_set(edited, **options))
    got = {
        "args flags": from_flags(settings["llama_cpp_flags"]),
        "args --override-kv": from_flags(settings["override_kv"]),
        "args kwargs": from_kwargs(settings["llama_cpp_python"]),
        "bridge": from_kwargs(llama_kwargs(scaling, read(tiny))),
        "gguf-set file": from_file_values(gguf_py_values(edited)),
    }
    for source, params in got.items():
        assert params == expected, source
    assert from_ggml(ggml_args(scaling)) == expected[1:], "ggml oracle"


def test_the_table_fails_on_a_different_mapping(tiny):
    # The comparison is sensitive: the old bridge's unrounded NTK base (43872.99... instead of
    # float32's 43873) and a yarn without the betas are caught.
    _, scaling, expected = CASES["ntk"]
    kw = llama_kwargs(scaling, read(tiny))
    assert from_kwargs({**kw, "rope_freq_base": scaling.ntk_base}) == expected  # f32 hides it here ...
    assert kw["rope_freq_base"] == f32(scaling.ntk_base)  # ... so the value itself is pinned
    assert from_kwargs({**kw, "rope_freq_base": scaling.ntk_base * (1 + 1e-6)}) != expected
    yarn = llama_kwargs(CASES["yarn"][1], read(tiny))
    assert from_kwargs({**yarn, "yarn_beta_fast": 16.0}) != CASES["yarn"][2]


@pytest.mark.llama
def test_a_yarn_file_with_attn_factor_gets_it_written_back(tmp_path):
    # Finding 1 of issue 13: gguf-set --alpha 2 on a yarn file with attn_factor 1.2 left the 1.2,
    # which llama.cpp multiplies into cos/sin for every scaling type.
    pytest.importorskip("llama_cpp")
    from pyntk.llama import Session

    path = tinymodels.write_model(tmp_path / "y.gguf", context=L0, scaling_type="yarn", factor=2.0,
                                  original_context=L0, attn_factor=1.2)
    original = tmp_path / "original.gguf"
    shutil.copy(path, original)
    plan = plan_set(path, alpha=2)
    apply(plan)
    assert gguf_py_values(path)["llama.rope.scaling.attn_factor"] == 1.0
    assert read(path).rope().cos_sin_scale == 1.0
    # llama.cpp on the edited file, no flags == llama.cpp on the original file told the scaling
    tokens = [(7 * i + 3) % 512 for i in range(48)]
    positions = list(range(48))
    with Session(path, n_ctx=64) as s:
        edited = s.decode(tokens, positions)
    with Session(original, plan.target.scaling, n_ctx=64) as s:
        told = s.decode(tokens, positions)
    with Session(original, n_ctx=64) as s:
        untouched = s.decode(tokens, positions)
    assert abs(edited - told).max() == 0.0
    assert abs(edited - untouched).max() > 1e-3  # the comparison can see a different rope


def test_backward_mapping_round_trips(tiny, tmp_path):
    for name, (options, scaling, _) in CASES.items():
        edited = tmp_path / f"{name}.gguf"
        shutil.copy(tiny, edited)
        apply(plan_set(edited, **options))
        back = read(edited).scaling()
        view = read(tiny)
        assert (llamacpp.with_context(llamacpp.to_llama(back), view)
                == llamacpp.with_context(llamacpp.to_llama(scaling), view)), name
    assert read(tmp_path / "ntk-by-parts.gguf").scaling().method == "ntk-by-parts"


def test_a_none_file_with_attn_factor_reads_as_yarn_factor_1(tmp_path):
    path = tinymodels.write_model(tmp_path / "n.gguf", context=L0, scaling_type="none", attn_factor=1.2)
    s = read(path).scaling()
    assert (s.method, s.factor, s.attn_factor) == ("yarn", 1.0, f32(1.2))


@pytest.mark.parametrize("kw, name", [
    (dict(method="yarn", factor=2, attn_factor=1e39), "attn_factor"),
    (dict(method="yarn", factor=2, beta_fast=1e39), "beta_fast"),
    (dict(method="ntk-by-parts", factor=2, beta_fast=1e40, beta_slow=1e39), "beta_fast"),
    (dict(method="linear", factor=1e39), "factor"),
    (dict(method="none", base=1e39), "base"),
    (dict(method="ntk", alpha=1e36), "alpha"),  # the new base, 1e4 * 1e36^(64/62)
])
def test_every_float_llama_cpp_holds_is_checked_against_float32(kw, name):
    # attn_factor reached struct.pack unchecked (OverflowError), the betas were not rounded or
    # checked at all: every float of the mapping now goes through one check
    if kw["method"] != "linear" and kw["method"] not in ("none", "ntk"):
        kw["original_context"] = L0
    scaling = RopeScaling(dims=D, **kw)
    with pytest.raises(ValueError, match=f"does not fit llama.cpp's float32 .*; choose a smaller {name}$"):
        llamacpp.to_llama(scaling)


def test_the_betas_are_float32_like_every_other_float():
    rope = llamacpp.to_llama(RopeScaling(method="yarn", factor=2, dims=D, original_context=L0, beta_fast=16.1))
    assert rope.beta_fast == f32(16.1)
