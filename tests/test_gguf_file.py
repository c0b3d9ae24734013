"""pyntk.gguf_file: the validating GGUF metadata reader, its encoder and the layout hint."""

from __future__ import annotations

import struct

import ggufs
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from pyntk.errors import PyntkError
from pyntk.edit import plan_set
from pyntk.record import LAYOUT_KEY
from pyntk.writer import apply
from pyntk.gguf_file import CorruptGGUF, GGUFFile, _Cursor, encode_entry, encode_value

T = GGUFValueType

EVERY_TYPE = {
    "t.u8": (200, T.UINT8), "t.i8": (-100, T.INT8), "t.u16": (60000, T.UINT16), "t.i16": (-30000, T.INT16),
    "t.u32": (4_000_000_000, T.UINT32), "t.i32": (-2_000_000_000, T.INT32),
    "t.u64": (2**63 + 5, T.UINT64), "t.i64": (-(2**62), T.INT64),
    "t.f32": (0.1, T.FLOAT32), "t.f64": (0.1, T.FLOAT64), "t.bool": (True, T.BOOL),
    "t.str": ("héllo ✓", T.STRING), "t.empty": ("", T.STRING),
    "t.arr_i32": ([1, -2, 3], T.ARRAY, T.INT32), "t.arr_f32": ([0.5, 1.5], T.ARRAY, T.FLOAT32),
    "t.arr_str": (["a", "bc", "✓"], T.ARRAY, T.STRING),
    "t.arr_big": (list(range(1000)), T.ARRAY, T.UINT16),
}


@pytest.fixture
def every_type(tmp_path):
    kv = ggufs.model_kv("llama")
    kv.update(EVERY_TYPE)
    return ggufs.write_gguf(tmp_path / "types.gguf", kv, vocab_size=300, merges=10)


def test_encoder_matches_gguf_py_byte_for_byte(every_type):
    g = GGUFFile(str(every_type))
    raws = g.raw_values(list(g.entries))
    assert len(raws) == len(g.entries) > len(EVERY_TYPE)
    data = every_type.read_bytes()
    for name, e in g.entries.items():
        value = g.value(name)
        assert encode_value(e.type, value, e.array_type) == raws[name], name
        assert encode_entry(name, e.type, value, e.array_type) == data[e.start:e.end], name


def test_values_read_back(every_type):
    g = GGUFFile(str(every_type))
    for name, (value, *types) in EVERY_TYPE.items():
        got = g.value(name)
        if types[0] == T.FLOAT32:
            assert got == struct.unpack("<f", struct.pack("<f", value))[0]
        elif types[0] == T.ARRAY and types[1] == T.FLOAT32:
            assert got == pytest.approx(value)
        else:
            assert got == value, name
    assert g.entries["t.arr_big"].value is None  # large arrays are decoded on demand only
    assert len(g.value("tokenizer.ggml.tokens")) == 300


def test_agrees_with_gguf_py_reader(every_type):
    g = GGUFFile(str(every_type))
    r = GGUFReader(str(every_type))
    assert g.data_offset == r.data_offset
    assert [(t.name, t.type, t.offset) for t in g.tensors] == \
        [(t.name, t.tensor_type, t.data_offset - r.data_offset) for t in r.tensors]
    assert [t.shape for t in g.tensors] == [tuple(int(x) for x in t.shape) for t in r.tensors]
    assert [t.nbytes for t in g.tensors] == [int(t.n_bytes) for t in r.tensors]
    assert list(g.entries) == [k for k in r.fields if not k.startswith("GGUF.")]


def test_encoder_rejects_what_it_cannot_write():
    with pytest.raises(ValueError, match="element type"):
        encode_value(T.ARRAY, [1, 2])
    with pytest.raises(ValueError, match="nested"):
        encode_value(T.ARRAY, [[1]], T.ARRAY)


def _careful_tensors(g: GGUFFile):
    """The tensor infos parsed field by field (the slow path)."""
    with open(g.path, "rb") as f:
        buf = f.read()
    c = _Cursor(buf, g.path)
    c.off = g.kv_end
    return [g._tensor_info(c, i) for i in range(g.tensor_count)]


def test_fast_tensor_info_path_matches_careful_path(every_type):
    g = GGUFFile(str(every_type))
    assert [(t.name, t.shape, t.type, t.offset) for t in g.tensors] == _careful_tensors(g)


@pytest.mark.model
def test_fast_tensor_info_path_on_the_real_model(model_path):
    g = GGUFFile(str(model_path))
    assert len(g.tensors) == 272
    assert [(t.name, t.shape, t.type, t.offset) for t in g.tensors] == _careful_tensors(g)


# --- the layout hint ----------------------------------------------------------------------------

@pytest.fixture
def edited(tmp_path):
    path = ggufs.write_model(tmp_path / "m.gguf", vocab_size=2000, merges=500)
    apply(plan_set(path, alpha=4))
    return path


def _set_layout(path, prefix_end, kv_end):
    e = GGUFFile(str(path)).entries[LAYOUT_KEY]
    ggufs.patch_bytes(path, e.value_start, encode_value(T.ARRAY, [prefix_end, kv_end], T.UINT64))


def test_layout_hint_skips_the_vocabulary(edited):
    fast, full = GGUFFile(str(edited), layout_key=LAYOUT_KEY), GGUFFile(str(edited))
    assert fast.partial and not full.partial
    assert "tokenizer.ggml.tokens" not in fast.entries and "tokenizer.ggml.tokens" in full.entries
    for name, entry in fast.entries.items():
        assert full.entries[name] == entry
    assert (fast.kv_end, fast.tensor_info_end, fast.data_offset, fast.tensors) == \
        (full.kv_end, full.tensor_info_end, full.data_offset, full.tensors)
    assert not GGUFFile(str(edited)).partial  # no layout_key: always the whole walk


@pytest.mark.parametrize("shift", ["kv_end", "prefix_end", "beyond"])
def test_a_stale_layout_hint_falls_back_to_the_whole_walk(edited, shift):
    full = GGUFFile(str(edited))
    prefix_end, kv_end = full.value(LAYOUT_KEY)
    if shift == "kv_end":
        _set_layout(edited, prefix_end, kv_end - 9)
    elif shift == "prefix_end":
        _set_layout(edited, prefix_end + 1, kv_end)
    else:
        _set_layout(edited, prefix_end, full.file_size + 10)
    g = GGUFFile(str(edited), layout_key=LAYOUT_KEY)
    assert not g.partial
    assert g.tensors == full.tensors and list(g.entries) == list(full.entries)


def test_a_layout_hint_does_not_hide_truncation(edited):
    ggufs.truncate(edited, -1)
    with pytest.raises(CorruptGGUF, match="truncated or corrupt"):
        GGUFFile(str(edited), layout_key=LAYOUT_KEY)


# --- validation ---------------------------------------------------------------------------------

def _header(n_tensors, n_kv, version=3):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _tensor_info(name, shape, ttype, offset):
    return (encode_value(T.STRING, name) + struct.pack("<I", len(shape))
            + struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", ttype, offset))


def _craft(path, entries, infos=(), data=b"", alignment=32):
    meta = _header(len(infos), len(entries)) + b"".join(entries) + b"".join(infos)
    meta += b"\0" * (-len(meta) % alignment)
    path.write_bytes(meta + data)
    return path


ARCH = encode_entry("general.architecture", T.STRING, "llama")


@pytest.mark.parametrize("case, match", [
    ("duplicate", "appears twice"),
    ("bad type", "unknown value type 77"),
    ("huge string", "truncated or corrupt"),
    ("huge count", "corrupt GGUF header"),
    ("bad utf8", "not valid UTF-8"),
    ("deep array", "nests arrays deeper"),
    ("alignment", "power-of-two uint32"),
    ("dims", "has 5 dimensions"),
    ("tensor type", "unknown type 200"),
    ("misaligned", "misaligned or runs past"),
    ("past end", "misaligned or runs past"),
    ("block size", "not a multiple of the Q8_0 block size"),
])
def test_corrupt_files_are_refused_with_a_reason(tmp_path, case, match):
    p = tmp_path / "bad.gguf"
    f32 = int(GGMLQuantizationType.F32)
    if case == "duplicate":
        _craft(p, [ARCH, ARCH])
    elif case == "bad type":
        _craft(p, [ARCH, encode_value(T.STRING, "x") + struct.pack("<I", 77) + b"\0" * 8])
    elif case == "huge string":
        _craft(p, [ARCH, encode_value(T.STRING, "x") + struct.pack("<IQ", T.STRING, 2**62)])
    elif case == "huge count":
        p.write_bytes(_header(0, 2**40) + ARCH)
    elif case == "bad utf8":
        _craft(p, [ARCH, struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<I", T.UINT8) + b"\0"])
    elif case == "deep array":
        nested = encode_value(T.STRING, "x") + struct.pack("<I", T.ARRAY)
        nested += (struct.pack("<IQ", T.ARRAY, 1)) * 4 + struct.pack("<IQ", T.UINT8, 1) + b"\0"
        _craft(p, [ARCH, nested])
    elif case == "alignment":
        _craft(p, [ARCH, encode_entry("general.alignment", T.UINT32, 48)])
    elif case == "dims":
        _craft(p, [ARCH], [_tensor_info("t", (1, 1, 1, 1, 1), f32, 0)], b"\0" * 32)
    elif case == "tensor type":
        _craft(p, [ARCH], [_tensor_info("t", (8,), 200, 0)], b"\0" * 32)
    elif case == "misaligned":
        _craft(p, [ARCH], [_tensor_info("t", (8,), f32, 4)], b"\0" * 64)
    elif case == "past end":
        _craft(p, [ARCH], [_tensor_info("t", (1024,), f32, 0)], b"\0" * 64)
    elif case == "block size":
        _craft(p, [ARCH], [_tensor_info("t", (33,), int(GGMLQuantizationType.Q8_0), 0)], b"\0" * 64)
    with pytest.raises(PyntkError, match=match):
        GGUFFile(str(p))


def test_a_crafted_file_that_is_fine_parses(tmp_path):
    p = _craft(tmp_path / "ok.gguf", [ARCH], [_tensor_info("t", (8,), int(GGMLQuantizationType.F32), 0)],
               b"\1" * 32)
    g = GGUFFile(str(p))
    assert g.tensors[0].nbytes == 32 and g.data_offset + 32 == g.file_size


@pytest.mark.parametrize("version, match", [(1, "unsupported GGUF version 1"),
                                            (0x03000000, "unsupported big-endian GGUF version 3")])
def test_unsupported_versions(tmp_path, version, match):
    p = ggufs.write_model(tmp_path / "m.gguf")
    ggufs.patch_bytes(p, 4, struct.pack("<I", version))
    with pytest.raises(PyntkError, match=match):
        GGUFFile(str(p))


def test_not_a_file(tmp_path):
    with pytest.raises(PyntkError, match="no such file"):
        GGUFFile(str(tmp_path / "missing.gguf"))
    with pytest.raises(PyntkError, match="is a directory"):
        GGUFFile(str(tmp_path))
    (tmp_path / "short").write_bytes(b"GG")
    with pytest.raises(PyntkError, match="not a GGUF file"):
        GGUFFile(str(tmp_path / "short"))


def test_every_truncation_is_refused_cleanly(tmp_path):
    src = ggufs.write_model(tmp_path / "m.gguf", vocab_size=64, merges=8)
    full = src.read_bytes()
    g = GGUFFile(str(src))
    # every byte of the header and first keys, then a sample through the rest of the metadata
    cut_points = list(range(0, 128)) + list(range(128, g.data_offset + 1, 11)) + [g.file_size - 1]
    p = tmp_path / "cut.gguf"
    for cut in cut_points:
        p.write_bytes(full[:cut])
        with pytest.raises(PyntkError):
            GGUFFile(str(p))


@pytest.mark.parametrize("layout", [False, True])
def test_random_corruption_never_escapes_as_another_exception(tmp_path, rng, layout):
    src = ggufs.write_model(tmp_path / "m.gguf", vocab_size=64, merges=8)
    if layout:
        apply(plan_set(src, alpha=2))
    clean = src.read_bytes()
    meta_end = GGUFFile(str(src)).data_offset
    p = tmp_path / "fuzz.gguf"
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(clean)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, meta_end))
            data[pos] = int(rng.integers(0, 256))
        p.write_bytes(bytes(data))
        try:
            GGUFFile(str(p), layout_key=LAYOUT_KEY if layout else None)
            outcomes["ok"] += 1
        except PyntkError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["ok"] > 0


def test_raw_values_and_large_arrays_on_demand(every_type):
    g = GGUFFile(str(every_type))
    assert g.array("t.arr_big") == list(range(1000))
    raw = g.raw_values(["t.u32"])["t.u32"]
    assert raw == struct.pack("<I", 4_000_000_000)
    assert np.frombuffer(g.raw_values(["t.arr_big"])["t.arr_big"][12:], "<u2").tolist() == list(range(1000))


def test_writer_assumption_gguf_py_refuses_empty_arrays(tmp_path):
    """Why pyntk omits pyntk.absent instead of writing an empty list."""
    w = GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    w.add_array("x", [])
    assert "x" not in w.kv_data[0]
