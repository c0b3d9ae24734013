"""Fuzzed GGUF edits: every corrupted file ends in a clear error or a correct edit, never a traceback.

The cases come from tools/fuzz_gguf.py (valid bases, corruptions, checks; its docstring says what
passes): here a quick, derandomized run on generated files and one on the real model's metadata,
then the bugs found on the way, each as a plain test. The long run is `python tools/fuzz_gguf.py`;
its result is in docs/HARDENING.md.
"""

from __future__ import annotations

import json
import re
import struct

import fuzz_gguf
import ggufs
import pytest
from gguf import GGUFValueType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyntk.cli import main
from pyntk.edit import plan_reset, plan_set
from pyntk.llamacpp import read as read_view
from pyntk.record import LAYOUT_KEY, SCALING_KEY, read_original
from pyntk.writer import apply
from pyntk.gguf_file import GGUFFile

T = GGUFValueType
FUZZ = dict(deadline=20000, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def generated(workdir):
    return fuzz_gguf.make_bases(workdir / "bases", model=None)


@pytest.fixture(scope="module")
def real(workdir, model_path):
    bases = fuzz_gguf.make_bases(workdir / "real-bases", model=model_path)
    return {name: parts for name, parts in bases.items() if name.startswith("real")}


def test_bases_are_valid_and_edited_ones_carry_pyntk_keys(generated):
    assert sorted(generated) == ["gemma3", "gemma3-edited", "llama", "llama-edited", "qwen2-yarn",
                                 "qwen2-yarn-edited"]
    for name, parts in generated.items():
        keys = parts.keys()
        assert (LAYOUT_KEY in keys) == name.endswith("-edited")
        assert parts.tensor_count == 4 and parts.data


@settings(max_examples=250, **FUZZ)
@given(data=st.data())
def test_fuzzed_generated_files(generated, workdir, data):
    fuzz_gguf.run_case(data.draw, generated, workdir)


@pytest.mark.model
@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_fuzzed_real_model_metadata(real, workdir, data):
    fuzz_gguf.run_case(data.draw, real, workdir)


# --- bugs found on the way (docs/HARDENING.md) ------------------------------------------

def _edited(tmp_path, **kv):
    """A small model after `gguf-set --alpha 2`, then with some key/values replaced."""
    path = ggufs.write_model(tmp_path / "m.gguf")
    apply(plan_set(path, alpha=2))
    if kv:
        ggufs.write_gguf(path, {**ggufs.kv_of(path), **kv})
    return path


@pytest.mark.parametrize("layout", [(True, T.BOOL), ([1, 2], T.ARRAY, T.UINT32),
                                    ([1, 2, 3], T.ARRAY, T.UINT64), ("x", T.STRING)])
def test_a_malformed_layout_hint_is_replaced_not_an_assertion(tmp_path, layout):
    # build_metadata asserted that pyntk.layout keeps its size, so a pyntk.layout of another type
    # made every rewrite fail with AssertionError. An in-place edit leaves it (readers ignore it),
    # a rewrite writes a proper one.
    path = _edited(tmp_path, **{LAYOUT_KEY: layout})
    data = ggufs.data_hash(path)
    assert plan_set(path, alpha=4).mode == "in-place"
    apply(plan_set(path, alpha=4))
    plan = plan_set(path, method="linear", factor=2)
    assert plan.mode == "rewrite"
    apply(plan)
    g = GGUFFile(str(path), layout_key=LAYOUT_KEY)
    assert g.partial and g.entries[LAYOUT_KEY].array_type == T.UINT64
    assert ggufs.data_hash(path) == data and read_view(g).scaling_type == "linear"


@pytest.mark.parametrize("text", ["null", "[1]", "5", '"ntk"'])
def test_a_scaling_record_that_is_not_a_json_object_is_replaced(tmp_path, text):
    # pyntk.scaling holding valid JSON that is not an object raised AttributeError (a traceback).
    path = _edited(tmp_path, **{SCALING_KEY: text})
    apply(plan_set(path, alpha=4))
    assert json.loads(GGUFFile(str(path)).value(SCALING_KEY))["alpha"] == 4
    apply(plan_reset(path))
    assert read_view(path).base == 10000


def test_a_layout_hint_pointing_at_an_earlier_boundary_is_not_trusted(tmp_path):
    # A damaged hint whose prefix_end is the end of pyntk.layout itself (a real entry boundary)
    # made the reader stop before pyntk.original.*: the edited values were read as the originals
    # and gguf-reset removed pyntk's keys without restoring anything.
    path = _edited(tmp_path)
    layout = GGUFFile(str(path)).entries[LAYOUT_KEY]
    ggufs.patch_bytes(path, layout.value_start + 12, struct.pack("<Q", layout.end))
    hinted, full = GGUFFile(str(path), layout_key=LAYOUT_KEY), GGUFFile(str(path))
    assert not hinted.partial and list(hinted.entries) == list(full.entries)
    assert read_original(hinted).context_length == 4096
    apply(plan_reset(path))
    assert read_view(path).context_length == 4096


@pytest.mark.parametrize("kv, match", [
    ({"llama.context_length": 0}, "original_context must be"),
    ({"llama.rope.scaling.original_context_length": 0}, "original_context must be"),
    ({"llama.rope.freq_base": 0.5}, "base must be"),
    ({"llama.rope.freq_base": -5.0}, "base must be"),
    ({"llama.rope.dimension_count": 3}, "dims must be"),
])
def test_original_values_no_scaling_can_start_from_are_a_file_error(tmp_path, capsys, kv, match):
    # These reached plan.py's logarithms ("pyntk: error: math domain error") or RopeScaling, whose
    # message reads as if the user's option were wrong. Now: the file, and what is wrong in it.
    path = ggufs.write_model(tmp_path / "m.gguf", **kv)
    before = ggufs.file_hash(path)
    assert main(["gguf-set", "--alpha", "4", "--yes", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pyntk: error: {path}: ") and match in err and "\n" not in err
    assert ggufs.file_hash(path) == before


@pytest.mark.parametrize("kv, argv, match", [
    ({"llama.rope.freq_base": 3.4e38}, ["--alpha", "2"], "new rope base .* does not fit"),
    ({}, ["--alpha", "1e300"], "--alpha 1e\\+300 with base 10000 is too large for ntk"),
    ({}, ["--base", "1e300"], "new rope base 1e\\+300 does not fit"),
    ({}, ["--method", "linear", "--factor", "1e39", "--ctx", "10000"], "--factor 1e\\+39 does not fit"),
    ({"llama.rope.freq_base": (1e300, T.FLOAT64)}, ["--alpha", "2"], "m.gguf: .*freq_base 1e\\+300 does not fit"),
    ({"general.architecture": "\r"}, ["--alpha", "2"], "general.architecture is missing or not a name"),
])
def test_values_past_float32_and_control_characters_are_one_line_errors(tmp_path, capsys, kv, argv, match):
    # A base past float32's range (from the file, or from a huge --alpha/--base/--factor) raised
    # OverflowError from struct.pack or from alpha ** (d/(d-2)): a traceback. An architecture name
    # with a carriage return went into the error message and broke it into two lines.
    path = ggufs.write_model(tmp_path / "m.gguf", **kv)
    before = ggufs.file_hash(path)
    assert main(["gguf-set", *argv, "--yes", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pyntk: error: ") and re.search(match, err), err
    assert ggufs.file_hash(path) == before


def test_fuzz_script_runs(tmp_path, capsys):
    assert fuzz_gguf.main(["--cases", "5", "--seed", "1", "--minutes", "1"]) == 0
    assert ": 5 cases in" in capsys.readouterr().out
