"""Fuzzed GGUF metadata: every corrupted file ends in a PyntkError or a correct read.

Never another exception, a hang or a change to the input file. The base file is the real
test model's metadata (its full 100k-entry vocabulary) without tensors, so a valid file is
small enough to rewrite for every example.
"""

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyntk.errors import PyntkError
from pyntk.llamacpp import read as read_view
from pyntk.gguf_file import GGUFFile

FUZZ = settings(max_examples=150, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base(model_path):
    g = GGUFFile(model_path)
    with open(model_path, "rb") as f:
        f.seek(g.kv_start)
        kvs = f.read(g.kv_end - g.kv_start)
    data = b"GGUF" + struct.pack("<IQQ", g.version, 0, g.kv_count) + kvs
    entries = {k: (e.start - g.kv_start + 24, e.value_start - g.kv_start + 24, e.type)
               for k, e in g.entries.items()}
    return data, entries


def check(tmp_path, data: bytes):
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(data)
    digest = hashlib.sha256(data).digest()
    try:
        g = GGUFFile(path)
        read_view(g)
    except PyntkError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    assert hashlib.sha256(path.read_bytes()).digest() == digest


def test_base_file_is_valid(tmp_path, base):
    data, _ = base
    path = tmp_path / "base.gguf"
    path.write_bytes(data)
    info = read_view(path)
    assert (info.arch, info.context_length, info.dims) == ("llama", 8192, 64)
    assert len(GGUFFile(path).array("tokenizer.ggml.tokens")) == 49152


@FUZZ
@given(cut=st.floats(0, 1))
def test_truncated_anywhere(tmp_path, base, cut):
    data, _ = base
    check(tmp_path, data[:int(len(data) * cut)])


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
       head_bias=st.booleans())
def test_flipped_bytes(tmp_path, base, flips, head_bias):
    data = bytearray(base[0])
    span = 4096 if head_bias else len(data)  # lengths and types crowd the start
    for where, value in flips:
        data[int(where * (span - 1))] = value
    check(tmp_path, bytes(data))


ABSURD = st.sampled_from([0, 1, 2**31 - 1, 2**32, 2**63 - 1, 2**64 - 1]) | st.integers(0, 2**64 - 1)


@FUZZ
@given(which=st.sampled_from(["tensor_count", "kv_count"]), value=ABSURD)
def test_absurd_header_counts(tmp_path, base, which, value):
    data = bytearray(base[0])
    struct.pack_into("<Q", data, 8 if which == "tensor_count" else 16, value)
    check(tmp_path, bytes(data))


@FUZZ
@given(index=st.integers(0, 32), field=st.sampled_from(["key_length", "type", "array_count"]),
       value=ABSURD)
def test_absurd_entry_fields(tmp_path, base, index, field, value):
    data, entries = base
    data = bytearray(data)
    start, value_start, _ = list(entries.values())[index % len(entries)]
    if field == "key_length":
        struct.pack_into("<Q", data, start, value)
    elif field == "type":
        struct.pack_into("<I", data, value_start - 4, value & 0xFFFFFFFF)
    else:
        struct.pack_into("<Q", data, value_start + 4, value)
    check(tmp_path, bytes(data))


@pytest.mark.parametrize("key", ["llama.rope.freq_base", "llama.context_length",
                                 "llama.rope.dimension_count", "general.architecture"])
@pytest.mark.parametrize("new_type", [0, 4, 6, 7, 8, 10, 12])
def test_wrong_value_types_for_rope_keys(tmp_path, base, key, new_type):
    """A rope key with another type is either read correctly or refused, never misread."""
    data, entries = base
    data = bytearray(data)
    _, value_start, old_type = entries[key]
    struct.pack_into("<I", data, value_start - 4, new_type)
    path = tmp_path / "typed.gguf"
    path.write_bytes(bytes(data))
    try:
        info = read_view(path)
    except PyntkError:
        return
    # Read without error: the values must be those of a consistent re-interpretation.
    assert isinstance(info.context_length, int) and isinstance(info.dims, int)
    assert isinstance(info.base, float)


def test_duplicate_key_is_refused(tmp_path, base):
    data, entries = base
    data = bytearray(data)
    start, _, _ = entries["general.type"]
    assert len("general.type") == len("general.name")
    data[start + 8:start + 8 + 12] = b"general.name"
    path = tmp_path / "dup.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(PyntkError, match="'general.name' appears twice"):
        GGUFFile(path)
