"""A fast, strictly validating reader of GGUF metadata.

gguf-py's GGUFReader builds a numpy view per vocabulary string: seconds for one
model's metadata. This reader only walks the header, key/values and tensor infos
with struct, trusts no length or count until checked against the file size, and
records where each entry's bytes are so that values can be patched in place or
copied verbatim into a rewritten file. Names and types come from gguf-py.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

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


@dataclass(frozen=True)
class TensorInfo:
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
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if off + 8 > size:
                break
            off += 8 + unpack(buf, off)[0]
            if off > size:
                break
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

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
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
        self.kv_end = c.off

        alignment = self.value("general.alignment", DEFAULT_ALIGNMENT)
        entry = self.entries.get("general.alignment")
        if entry is not None and (entry.type != GGUFValueType.UINT32 or alignment == 0
                                  or alignment & (alignment - 1)):
            raise CorruptGGUF(f"{self.path}: general.alignment must be a power-of-two uint32, "
                              f"got {alignment!r}; the file is corrupt")
        self.alignment = alignment

        self.tensors: List[TensorInfo] = []
        for index in range(self.tensor_count):
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
            ttype = GGMLQuantizationType(raw_type)
            offset = c.unpack("<Q", f"offset of tensor {name!r}")
            self.tensors.append(TensorInfo(name, shape, ttype, offset, _nbytes(self.path, name, shape, ttype)))
        self.tensor_info_end = c.off
        self.data_offset = -(-c.off // self.alignment) * self.alignment
        for t in self.tensors:
            if t.offset % self.alignment or self.data_offset + t.offset + t.nbytes > self.file_size:
                raise CorruptGGUF(
                    f"{self.path}: tensor {t.name!r} ({t.nbytes} bytes at data offset {t.offset}) is "
                    f"misaligned or runs past the end of the file; the file is truncated or corrupt, "
                    f"re-download it"
                )

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

    def raw_entry(self, key: str) -> bytes:
        entry = self.entries[key]
        with open(self.path, "rb") as f:
            f.seek(entry.start)
            return f.read(entry.end - entry.start)


def _nbytes(path: str, name: str, shape: Tuple[int, ...], ttype: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[ttype]
    count = 1
    for n in shape:
        count *= n
    if shape[0] % block:
        raise CorruptGGUF(f"{path}: tensor {name!r} has {shape[0]} columns, not a multiple of the "
                          f"{ttype.name} block size {block}; the file is corrupt")
    return count // block * type_size


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise PyntkError(f"{path}: no such file; check the path")
    if os.path.isdir(path):
        raise PyntkError(f"{path}: is a directory; give the path of a .gguf file")
