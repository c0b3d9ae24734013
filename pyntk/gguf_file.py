"""A fast, strictly validating reader of GGUF metadata.

gguf-py's GGUFReader builds a numpy view per vocabulary string: seconds for one
model's metadata. This reader only walks the header, key/values and tensor infos
with struct, trusts no length or count until checked against the file size, and
records where each entry's bytes are so that values can be patched in place or
copied verbatim into a rewritten file. Names and types come from gguf-py.

``encode_entry``/``encode_value`` are the matching writer for single key/values.

A tool that validated a whole file and knows which keys it needs can leave a *layout hint*:
a ``uint64[2]`` key holding ``[prefix_end, kv_end]``, meaning "no key this tool reads lies
after byte prefix_end, and the tensor infos start at kv_end"; the keys a tool reads are those
of its namespace (the layout key's first component), of the architecture, and
general.architecture and general.alignment. ``GGUFFile(path, layout_key=...)`` then stops
walking the key/values at prefix_end (skipping the vocabulary, tens of thousands of strings)
and validates the tensor infos at kv_end instead. A hint that does not line up exactly (the
file was rewritten by another tool, or the hint is damaged) is ignored and the whole file is
walked; ``partial`` tells which happened. The skipped bytes are not validated.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import PyntkError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 4
SMALL_ARRAY = 64  # arrays up to this many elements are decoded eagerly

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}
_VALID_TYPES = {int(t) for t in GGUFValueType}
_VALID_TENSOR_TYPES = {int(t) for t in GGMLQuantizationType}
_TENSOR_TYPES = {int(t): (t, GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_TENSOR_INFO = {n: struct.Struct(f"<{n}QIQ") for n in range(1, MAX_DIMS + 1)}  # shape, type, offset


class CorruptGGUF(PyntkError):
    """The file is not a well-formed GGUF file."""


@dataclass(frozen=True)
class Entry:
    key: str
    type: GGUFValueType
    start: int  # first byte of the entry (its key length)
    value_start: int  # first byte of the value
    end: int  # one past the last byte of the value
    value: Any  # decoded value; None for a large array (see GGUFFile.array)
    array_type: Optional[GGUFValueType] = None
    array_len: int = 0

    @property
    def size(self) -> int:
        return self.end - self.value_start


class TensorInfo(NamedTuple):  # a NamedTuple: files have thousands of these, built on every parse
    name: str
    shape: Tuple[int, ...]
    type: GGMLQuantizationType
    offset: int  # relative to the data section
    nbytes: int


class _Cursor:
    def __init__(self, buf, path: str) -> None:
        self.buf, self.path, self.off, self.size = buf, path, 0, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.off + n > self.size:
            raise CorruptGGUF(
                f"{self.path}: truncated or corrupt GGUF ({what} at byte {self.off} runs past the "
                f"end of the {self.size}-byte file); re-download or re-convert the file"
            )

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.off)[0]
        self.off += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.off:self.off + n])
        self.off += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptGGUF(f"{self.path}: {what} at byte {self.off - n} is not valid UTF-8; "
                              f"the file is corrupt") from None

    def skip_strings(self, count: int, what: str) -> None:
        # Each string is at least its 8-byte length: reject absurd counts before looping.
        self.need(8 * count, what)
        buf, off, size = self.buf, self.off, self.size
        unpack = _U64.unpack_from
        try:  # the hot loop of the whole reader: one unpack per string, bounds checked by unpack
            for _ in itertools.repeat(None, count):
                off += 8 + unpack(buf, off)[0]
        except (struct.error, OverflowError):
            off = size + 1
        self.off = min(off, size + 1)
        self.need(0, what)

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.unpack("<I", f"type of {what}")
        if raw not in _VALID_TYPES:
            raise CorruptGGUF(f"{self.path}: {what} has unknown value type {raw}; the file is corrupt "
                              f"or from a newer GGUF version than pyntk's gguf package knows")
        return GGUFValueType(raw)


class GGUFFile:
    """Metadata of one GGUF file: entries by key (in file order), tensor infos, data offset."""

    def __init__(self, path: str, *, layout_key: Optional[str] = None) -> None:
        self.path = os.fspath(path)
        self.partial = False  # True when a layout hint let the key/value walk stop early
        self._layout_key = layout_key
        _check_path(self.path)
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                if self.file_size < 4 or f.read(4) != MAGIC:
                    f.seek(0)
                    raise PyntkError(
                        f"{self.path}: not a GGUF file (it starts with {f.read(4)!r}, not b'GGUF'); "
                        f"pyntk works on GGUF models as llama.cpp loads them (convert others with "
                        f"llama.cpp's convert_hf_to_gguf.py)"
                    )
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                    self._parse(buf)
        except PermissionError as e:
            raise PyntkError(f"{self.path}: permission denied ({e.strerror}); check its permissions") from None
        except IsADirectoryError:
            raise PyntkError(f"{self.path}: is a directory; give the path of a .gguf file") from None

    def _parse(self, buf) -> None:
        c = _Cursor(buf, self.path)
        c.off = 4
        version = c.unpack("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            kind = "big-endian " if swapped in SUPPORTED_VERSIONS else ""
            raise PyntkError(
                f"{self.path}: unsupported {kind}GGUF version {version if not kind else swapped}; "
                f"pyntk reads little-endian GGUF v2 and v3 (re-convert with a current llama.cpp)"
            )
        self.version = version
        self.tensor_count = c.unpack("<Q", "tensor count")
        self.kv_count = c.unpack("<Q", "key/value count")
        # An entry is at least 8 (key length) + 4 (type) + 1 bytes; a tensor info 8+4+8+4+8.
        if self.kv_count * 13 > self.file_size or self.tensor_count * 32 > self.file_size:
            raise CorruptGGUF(
                f"{self.path}: truncated or corrupt GGUF header ({self.kv_count} keys, {self.tensor_count} tensors "
                f"cannot fit in {self.file_size} bytes); re-download or re-convert the file"
            )
        self.kv_start = c.off
        self.entries: Dict[str, Entry] = {}
        layout = None
        for index in range(self.kv_count):
            start = c.off
            name = c.string(f"key #{index}")
            vtype = c.value_type(f"key {name!r}")
            value_start = c.off
            value, atype, alen = self._value(c, vtype, name, 0)
            if name in self.entries:
                raise CorruptGGUF(f"{self.path}: key {name!r} appears twice; llama.cpp refuses such "
                                  f"a file, re-convert it")
            self.entries[name] = Entry(name, vtype, start, value_start, c.off, value, atype, alen)
            if name == self._layout_key and atype == GGUFValueType.UINT64 and alen == 2:
                layout = value
            if layout is not None and c.off == layout[0] and index + 1 < self.kv_count:
                # The next key must be one the hint does not cover: a hint pointing at an earlier
                # entry boundary (damaged) would otherwise hide keys the tool reads.
                next_key = _peek_key(buf, c.off)
                if not self._hint_covers(next_key) and self._tail_from_hint(buf, layout[1], c.off):
                    return
                layout = None  # stale hint: walk on
        self.kv_end = c.off
        self._set_alignment()
        self._tensor_infos(c)

    def _hint_covers(self, name: Optional[str]) -> bool:
        """Whether a layout hint claims that no key ``name`` (None: unreadable) lies past its prefix."""
        if name is None or name in ("general.architecture", "general.alignment"):
            return True
        arch = self.entries.get("general.architecture")
        namespaces = [self._layout_key.split(".")[0] + "."]
        if arch is not None and isinstance(arch.value, str):
            namespaces.append(arch.value + ".")
        return name.startswith(tuple(namespaces))

    def _tail_from_hint(self, buf, kv_end: int, prefix_end: int) -> bool:
        """Parse the tensor infos at a recorded kv_end; False if they do not line up."""
        if not prefix_end <= kv_end <= self.file_size:
            return False
        try:
            self._set_alignment()
            t = _Cursor(buf, self.path)
            t.off = kv_end
            self._tensor_infos(t)
        except CorruptGGUF:
            return False
        self.kv_end = kv_end
        self.partial = True
        return True

    def _set_alignment(self) -> None:
        alignment = self.value("general.alignment", DEFAULT_ALIGNMENT)
        entry = self.entries.get("general.alignment")
        if entry is not None and (entry.type != GGUFValueType.UINT32 or alignment == 0
                                  or alignment & (alignment - 1)):
            raise CorruptGGUF(f"{self.path}: general.alignment must be a power-of-two uint32, "
                              f"got {alignment!r}; the file is corrupt")
        self.alignment = alignment

    def _tensor_infos(self, c: "_Cursor") -> None:
        self.tensors: List[TensorInfo] = []
        append, buf, size = self.tensors.append, c.buf, c.size
        for index in range(self.tensor_count):
            start = c.off
            try:  # fast path: one unpack per field group, bounds checked by unpack_from
                (n,) = _U64.unpack_from(buf, start)
                off = start + 8 + n
                if off + 4 > size:
                    raise IndexError
                name = str(buf[start + 8:off], "utf-8")
                (n_dims,) = _U32.unpack_from(buf, off)
                fields = _TENSOR_INFO[n_dims].unpack_from(buf, off + 4)  # KeyError unless 1..4
                shape, raw_type, offset = fields[:n_dims], fields[n_dims], fields[n_dims + 1]
                ttype, (block, type_size) = _TENSOR_TYPES[raw_type]
                c.off = off + 16 + 8 * n_dims
            except (IndexError, KeyError, UnicodeDecodeError, struct.error, OverflowError):
                c.off = start  # the careful path names what is wrong
                name, shape, ttype, offset = self._tensor_info(c, index)
                block, type_size = GGML_QUANT_SIZES[ttype]
            if shape[0] % block:
                raise CorruptGGUF(f"{self.path}: tensor {name!r} has {shape[0]} columns, not a multiple of "
                                  f"the {ttype.name} block size {block}; the file is corrupt")
            count = shape[0]
            for n in shape[1:]:
                count *= n
            append(TensorInfo(name, shape, ttype, offset, count // block * type_size))
        self.tensor_info_end = c.off
        self.data_offset = -(-c.off // self.alignment) * self.alignment
        for t in self.tensors:
            if t.offset % self.alignment or self.data_offset + t.offset + t.nbytes > self.file_size:
                raise CorruptGGUF(
                    f"{self.path}: tensor {t.name!r} ({t.nbytes} bytes at data offset {t.offset}) is "
                    f"misaligned or runs past the end of the file; the file is truncated or corrupt, "
                    f"re-download it"
                )

    def _tensor_info(self, c: "_Cursor", index: int):
        name = c.string(f"tensor name #{index}")
        n_dims = c.unpack("<I", f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise CorruptGGUF(f"{self.path}: tensor {name!r} has {n_dims} dimensions "
                              f"(1 to {MAX_DIMS} allowed); the file is corrupt")
        shape = tuple(c.unpack("<Q", f"shape of tensor {name!r}") for _ in range(n_dims))
        raw_type = c.unpack("<I", f"type of tensor {name!r}")
        if raw_type not in _VALID_TENSOR_TYPES:
            raise CorruptGGUF(f"{self.path}: tensor {name!r} has unknown type {raw_type}; the "
                              f"file is corrupt or newer than pyntk's gguf package")
        offset = c.unpack("<Q", f"offset of tensor {name!r}")
        return name, shape, GGMLQuantizationType(raw_type), offset

    def _value(self, c: _Cursor, vtype: GGUFValueType, name: str, depth: int, decode: bool = False):
        if vtype in _SCALAR:
            return c.unpack(_SCALAR[vtype], f"value of {name!r}"), None, 0
        if vtype == GGUFValueType.STRING:
            return c.string(f"value of {name!r}"), None, 0
        if depth >= MAX_ARRAY_DEPTH:
            raise CorruptGGUF(f"{self.path}: {name!r} nests arrays deeper than {MAX_ARRAY_DEPTH}; "
                              f"the file is corrupt")
        atype = c.value_type(f"array {name!r}")
        count = c.unpack("<Q", f"length of array {name!r}")
        start = c.off
        if atype in _SCALAR:
            width = struct.calcsize(_SCALAR[atype])
            c.need(count * width, f"array {name!r}")
            if decode or count <= SMALL_ARRAY:
                fmt = "<" + _SCALAR[atype][1] * count
                value = list(struct.unpack_from(fmt, c.buf, start))
            else:
                value = None
            c.off += count * width
        elif atype == GGUFValueType.STRING:
            if decode or count <= SMALL_ARRAY:
                value = [c.string(f"element of {name!r}") for _ in range(count)]
            else:
                c.skip_strings(count, f"array {name!r}")
                value = None
        else:
            c.need(count * 12, f"array {name!r}")  # each nested array has a type and a length
            value = [self._value(c, atype, name, depth + 1, decode)[0] for _ in range(count)]
        return value, atype, count

    def value(self, key: str, default: Any = None) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return default
        if entry.value is None and entry.array_type is not None:
            return self.array(key)
        return entry.value

    def array(self, key: str) -> list:
        """Decode a large array on demand."""
        entry = self.entries[key]
        with open(self.path, "rb") as f:
            f.seek(entry.value_start)
            raw = f.read(entry.size)
        return self._value(_Cursor(raw, self.path), entry.type, key, 0, decode=True)[0]

    def raw_values(self, keys) -> Dict[str, bytes]:
        """The stored bytes of several values (without key and type), read in one go."""
        out: Dict[str, bytes] = {}
        with open(self.path, "rb") as f:
            for key in keys:
                entry = self.entries[key]
                f.seek(entry.value_start)
                out[key] = f.read(entry.size)
        return out


def encode_value(vtype: GGUFValueType, value: Any,
                 array_type: Optional[GGUFValueType] = None) -> bytes:
    """The bytes of a value as GGUF stores it (without the key and the type tag)."""
    vtype = GGUFValueType(vtype)
    if vtype in _SCALAR:
        if vtype == GGUFValueType.BOOL:
            return struct.pack("<?", bool(value))
        return struct.pack(_SCALAR[vtype], value)
    if vtype == GGUFValueType.STRING:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(raw)) + raw
    if array_type is None:
        raise ValueError("an array value needs its element type")
    array_type = GGUFValueType(array_type)
    if array_type == GGUFValueType.ARRAY:
        raise ValueError("nested arrays are not supported by this encoder")
    parts = [struct.pack("<IQ", int(array_type), len(value))]
    parts.extend(encode_value(array_type, item) for item in value)
    return b"".join(parts)


def encode_entry(key: str, vtype: GGUFValueType, value: Any,
                 array_type: Optional[GGUFValueType] = None) -> bytes:
    """A whole key/value entry: key string, type tag, value."""
    return encode_value(GGUFValueType.STRING, key) + struct.pack("<I", int(vtype)) + \
        encode_value(vtype, value, array_type)


def _peek_key(buf, off: int) -> Optional[str]:
    """The key of the entry at ``off``, or None if it is not a readable string."""
    try:
        (n,) = _U64.unpack_from(buf, off)
        if off + 8 + n > len(buf):
            return None
        return str(buf[off + 8:off + 8 + n], "utf-8")
    except (struct.error, UnicodeDecodeError):
        return None


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise PyntkError(f"{path}: no such file; check the path")
    if os.path.isdir(path):
        raise PyntkError(f"{path}: is a directory; give the path of a .gguf file")
