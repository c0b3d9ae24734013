"""pyntk's record inside a file it edited: the original value of every key gguf-set changes.

Key layout (all written on the first edit; originals are never overwritten afterwards):
  ARCH.context_length, ARCH.rope.freq_base, ARCH.rope.scaling.type, ARCH.rope.scaling.factor,
  ARCH.rope.scaling.original_context_length, ARCH.rope.scaling.attn_factor
                    the values llama.cpp reads (llamacpp.FILE_KEYS); every edit writes all of
                    them, so later edits are in place
  pyntk.format      u32     layout version of these keys (1)
  pyntk.version     string  pyntk version that recorded the originals
  pyntk.scaling     string  JSON of the scaling in effect (RopeScaling.to_dict() under "scaling"; files
                            edited by an older pyntk have only its method, alpha and factor), the
                            base and context written, space-padded to a multiple of 256 bytes
  pyntk.layout      u64[2]  [prefix_end, kv_end]: no key pyntk reads lies after prefix_end, the
                            tensor infos start at kv_end (lets pyntk skip the vocabulary); only a
                            hint: GGUFFile checks it against the bytes before using it
  pyntk.absent      [string] managed keys that were absent before the first edit
  pyntk.original.K  K's original value with its original type, for each managed K present
A file edited before a key joined FILE_KEYS has no record of it: the next edit records it then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from gguf import GGUFValueType

from .errors import PyntkError
from .gguf_file import GGUFFile
from . import llamacpp

RECORD_PREFIX = "pyntk."
ORIGINAL_PREFIX = "pyntk.original."
FORMAT_KEY = "pyntk.format"
VERSION_KEY = "pyntk.version"
SCALING_KEY = "pyntk.scaling"
LAYOUT_KEY = "pyntk.layout"
ABSENT_KEY = "pyntk.absent"
RECORD_FORMAT = 1
SCALING_WIDTH = 256  # pyntk.scaling is padded to a multiple of this, so it changes in place


def pyntk_version() -> str:
    from . import __version__
    return __version__


# --- the record --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Original:
    """One key's value before pyntk's first edit, byte for byte."""

    type: GGUFValueType
    value: Any
    raw: bytes
    array_type: Optional[GGUFValueType] = None


@dataclass(frozen=True)
class Record:
    """pyntk's record inside a file it edited."""

    format: int
    version: str
    originals: Dict[str, Original]
    absent: Tuple[str, ...]
    scaling: Dict[str, Any]

    def covers(self, name: str) -> bool:
        return name in self.originals or name in self.absent

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "scaling": self.scaling,
            "originals": {k: o.value for k, o in self.originals.items()},
            "absent": list(self.absent),
        }


def _damaged(path: str, what: str) -> PyntkError:
    return PyntkError(f"{path}: pyntk's record in this file is damaged ({what}); restore the file from "
                      f"a backup or re-download it")


def read_record(gguf: GGUFFile) -> Optional[Record]:
    """pyntk's record of the original values, or None if pyntk never edited the file."""
    names = [k for k in gguf.entries if k.startswith(RECORD_PREFIX)]
    if not names:
        return None
    path = gguf.path
    entry = gguf.entries.get(FORMAT_KEY)
    if entry is None or entry.type != GGUFValueType.UINT32:
        raise _damaged(path, f"{FORMAT_KEY} is missing or not a uint32")
    if entry.value > RECORD_FORMAT:
        raise PyntkError(f"{path}: edited by a newer pyntk (record format {entry.value}; this pyntk "
                         f"reads format {RECORD_FORMAT}); upgrade pyntk: pip install -U pyntk")
    version = gguf.value(VERSION_KEY, "")
    absent = gguf.value(ABSENT_KEY, [])
    if not isinstance(absent, list) or not all(isinstance(a, str) for a in absent):
        raise _damaged(path, f"{ABSENT_KEY} is not a list of key names")
    original_names = [k for k in names if k.startswith(ORIGINAL_PREFIX)]
    raws = gguf.raw_values(original_names)
    originals = {}
    for name in original_names:
        e = gguf.entries[name]
        originals[name[len(ORIGINAL_PREFIX):]] = Original(e.type, gguf.value(name), raws[name], e.array_type)
    if set(originals) & set(absent):
        raise _damaged(path, "a key is recorded both as absent and with a value")
    try:
        scaling = json.loads(gguf.value(SCALING_KEY, "{}"))
    except (TypeError, ValueError):
        scaling = {}
    return Record(entry.value, version if isinstance(version, str) else "", originals, tuple(absent),
                  scaling if isinstance(scaling, dict) else {})



class OriginalValues:
    """A file's values as they were before pyntk's first edit (the record applied)."""

    def __init__(self, gguf: GGUFFile, record: Optional[Record]) -> None:
        self.gguf, self.record, self.path, self.tensors = gguf, record, gguf.path, gguf.tensors

    def value(self, name: str, default: Any = None) -> Any:
        if self.record is not None:
            original = self.record.originals.get(name)
            if original is not None:
                return original.value
            if name in self.record.absent:
                return default
        return self.gguf.value(name, default)



def read_original(source) -> llamacpp.RopeView:
    """llama.cpp's view of a file as it was before any pyntk edit (read() for unedited files)."""
    gguf = source if isinstance(source, GGUFFile) else GGUFFile(source, layout_key=LAYOUT_KEY)
    return llamacpp.read(OriginalValues(gguf, read_record(gguf)))
