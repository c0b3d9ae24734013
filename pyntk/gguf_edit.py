"""Read a GGUF model's RoPE hyper-parameters exactly as llama.cpp reads them, and edit them.

Key names come from gguf-py (``gguf.Keys``), the same table llama.cpp's converters use.
Edits (``plan_set``/``plan_reset`` then ``apply``) keep the original values inside the file, are
made in place when every changed value keeps its encoded size, and otherwise rewrite the file
atomically (temporary file beside it, fsync, rename); tensor data is never modified.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import struct
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from gguf import GGUFValueType, Keys

from .errors import PyntkError
from .gguf_file import Entry, GGUFFile, encode_entry, encode_value
from .plan import alpha_for_context, supported_context
from .scaling import RopeScaling

DEFAULT_BASE = 10000.0  # llama.cpp's rope_freq_base_train when the key is absent
DEFAULT_TYPE = "linear"  # llama.cpp's scaling type when the key is absent
# In the order of llama.cpp's enum llama_rope_scaling_type, so the index is its value.
LLAMA_CPP_TYPES = ("none", "linear", "yarn", "longrope")

# Architectures that encode positions without RoPE (absolute, ALiBi, recurrent ...).
NO_ROPE_ARCHS = frozenset({
    "bert", "jina-bert-v2", "gpt2", "bloom", "mpt", "jais", "starcoder", "t5", "t5encoder",
    "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "wavtokenizer-dec",
})


def key(template: str, arch: str) -> str:
    return template.format(arch=arch)


@dataclass(frozen=True)
class RopeInfo:
    """RoPE and context hyper-parameters of a GGUF file, defaults applied as llama.cpp does."""

    path: str
    arch: str
    context_length: int
    dims: int
    base: float
    scaling_type: str
    factor: float
    original_context: int
    attn_factor: float
    finetuned: bool
    head_count: Optional[int] = None
    head_count_kv: Optional[int] = None
    base_swa: Optional[float] = None
    # keys that were absent, so their value above is llama.cpp's default
    defaulted: tuple = field(default_factory=tuple)

    @property
    def has_sliding_window(self) -> bool:
        return self.base_swa is not None

    def scaling(self) -> RopeScaling:
        """The scaling llama.cpp applies to this file with no runtime flags."""
        if self.scaling_type == "longrope":
            raise PyntkError(
                f"{self.path}: uses LongRoPE (per-frequency factor tensors), which pyntk does not model"
            )
        common = dict(base=self.base, dims=self.dims)
        if self.scaling_type == "none" or self.factor == 1.0:
            return RopeScaling(method="none", **common)
        if self.scaling_type == "linear":
            return RopeScaling(method="linear", factor=self.factor, **common)
        return RopeScaling(method="yarn", factor=self.factor, original_context=self.original_context,
                           attn_factor=self.attn_factor, **common)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["defaulted"] = list(self.defaulted)
        return d


def _whole(path: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PyntkError(f"{path}: {name} should be a non-negative integer, got {value!r}; "
                         f"the file is corrupt or was written by a broken converter")
    return value


def _number(path: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PyntkError(f"{path}: {name} should be a finite number, got {value!r}; "
                         f"the file is corrupt or was written by a broken converter")
    return float(value)


def read_rope(file_or_path) -> RopeInfo:
    """Read RoPE hyper-parameters as llama.cpp's llama_model::load_hparams reads them."""
    # Anything with .path and .value() (a GGUFFile, or a view of the original values).
    gguf = file_or_path if hasattr(file_or_path, "value") else GGUFFile(file_or_path, layout_key=LAYOUT_KEY)
    path = gguf.path
    arch = gguf.value(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch or not arch.isprintable():  # it goes into key names, messages
        raise PyntkError(f"{path}: general.architecture is missing or not a name ({arch!r}); this GGUF is "
                         f"not a model llama.cpp can load")
    if arch in NO_ROPE_ARCHS:
        raise PyntkError(f"{path}: architecture {arch!r} does not use RoPE, so there is nothing to scale")
    defaulted = []

    def get(template: str, default: Any = None) -> Any:
        name = key(template, arch)
        value = gguf.value(name)
        if value is None:
            defaulted.append(name)
            return default
        return value

    ctx = get(Keys.LLM.CONTEXT_LENGTH)
    if ctx is None:
        raise PyntkError(f"{path}: {key(Keys.LLM.CONTEXT_LENGTH, arch)} is missing; llama.cpp "
                         f"cannot load this file either")
    ctx = _whole(path, "context_length", ctx)
    heads = get(Keys.Attention.HEAD_COUNT)
    if isinstance(heads, list):  # per-layer head counts: llama.cpp takes the first layer's for n_rot
        heads = heads[0] if heads else None
    heads_kv = get(Keys.Attention.HEAD_COUNT_KV, heads)
    if isinstance(heads_kv, list):
        heads_kv = heads_kv[0] if heads_kv else None
    dims = get(Keys.Rope.DIMENSION_COUNT)
    if dims is None:
        head_dim = get(Keys.Attention.KEY_LENGTH)
        embd = get(Keys.LLM.EMBEDDING_LENGTH)
        if head_dim is None and isinstance(embd, int) and isinstance(heads, int) and heads > 0:
            head_dim = embd // heads
        if head_dim is None:
            raise PyntkError(f"{path}: cannot tell the rotary dimensions ({key(Keys.Rope.DIMENSION_COUNT, arch)} "
                             f"and the head size keys are missing)")
        dims = head_dim
    dims = _whole(path, "rope.dimension_count", dims)

    factor = get(Keys.Rope.SCALING_FACTOR)
    if factor is None:
        factor = gguf.value(f"{arch}.rope.scale_linear") or 0.0
    factor = _number(path, "rope.scaling.factor", factor)
    scaling_type = get(Keys.Rope.SCALING_TYPE, DEFAULT_TYPE)
    if scaling_type not in LLAMA_CPP_TYPES:
        raise PyntkError(f"{path}: unknown rope.scaling.type {scaling_type!r}; llama.cpp accepts "
                         f"{', '.join(LLAMA_CPP_TYPES)}, so it would refuse this file")
    base_swa = gguf.value(key(Keys.Rope.FREQ_BASE_SWA, arch))
    return RopeInfo(
        path=path,
        arch=arch,
        context_length=ctx,
        dims=dims,
        base=_number(path, "rope.freq_base", get(Keys.Rope.FREQ_BASE, DEFAULT_BASE)),
        scaling_type=scaling_type,
        # llama.cpp: freq_scale = 1/factor, with a factor of 0 meaning "no scaling"
        factor=1.0 if factor == 0.0 else factor,
        original_context=_whole(path, "rope.scaling.original_context_length",
                                get(Keys.Rope.SCALING_ORIG_CTX_LEN, ctx)),
        attn_factor=_number(path, "rope.scaling.attn_factor", get(Keys.Rope.SCALING_ATTN_FACTOR, 1.0)),
        finetuned=bool(get(Keys.Rope.SCALING_FINETUNED, False)),
        head_count=heads if isinstance(heads, int) else None,
        head_count_kv=heads_kv if isinstance(heads_kv, int) else None,
        base_swa=None if base_swa is None else _number(path, "rope.freq_base_swa", base_swa),
        defaulted=tuple(defaulted),
    )


# =============================================================================================
# Editing: pyntk's record of the original values, edit plans, in-place patches, atomic rewrites.
#
# Key layout (all written on the first edit; originals are never overwritten afterwards):
#   ARCH.context_length, ARCH.rope.freq_base, ARCH.rope.scaling.type, ARCH.rope.scaling.factor,
#   ARCH.rope.scaling.original_context_length    the five values llama.cpp reads; all five are
#                                                written by every edit, so later edits are in place
#   pyntk.format      u32     layout version of these keys (1)
#   pyntk.version     string  pyntk version that recorded the originals
#   pyntk.scaling     string  JSON of the scaling in effect, space-padded to a fixed width
#   pyntk.layout      u64[2]  [prefix_end, kv_end]: no key pyntk reads lies after prefix_end, the
#                             tensor infos start at kv_end (lets pyntk skip the vocabulary)
#   pyntk.absent      [string] managed keys that were absent before the first edit
#   pyntk.original.K  K's original value with its original type, for each managed K present
# =============================================================================================

RECORD_PREFIX = "pyntk."
ORIGINAL_PREFIX = "pyntk.original."
FORMAT_KEY = "pyntk.format"
VERSION_KEY = "pyntk.version"
SCALING_KEY = "pyntk.scaling"
LAYOUT_KEY = "pyntk.layout"
ABSENT_KEY = "pyntk.absent"
RECORD_FORMAT = 1
SCALING_WIDTH = 256  # pyntk.scaling is padded to a multiple of this, so it changes in place
TEMP_MARK = ".pyntk-tmp-"  # temporary files are named .MODEL.gguf.pyntk-tmp-PID
U32_MAX = 2**32 - 1
CTX_PAD = 256  # llama.cpp pads n_ctx up to a multiple of this
COPY_CHUNK = 32 << 20
SPACE_MARGIN = 16 << 20  # free space kept beyond the new file's size

# Methods llama.cpp can apply from the file alone, and the scaling type each is written as.
# There is no 'ntk' type in llama.cpp: static NTK is a new freq_base with type 'none'.
FILE_METHODS = {"none": "none", "ntk": "none", "linear": "linear", "yarn": "yarn"}
# ... and at run time, where NTK-by-parts is YaRN with its temperature cancelled through
# rope.scaling.attn_factor (a key override).
RUNTIME_METHODS = {**FILE_METHODS, "ntk-by-parts": "yarn"}

_U32, _F32, _STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING


def _pyntk_version() -> str:
    from . import __version__
    return __version__


def managed_keys(arch: str) -> Dict[str, GGUFValueType]:
    """The keys gguf-set writes, in the order they are inserted, with the type llama.cpp expects."""
    return {
        key(Keys.LLM.CONTEXT_LENGTH, arch): _U32,
        key(Keys.Rope.FREQ_BASE, arch): _F32,
        key(Keys.Rope.SCALING_TYPE, arch): _STR,
        key(Keys.Rope.SCALING_FACTOR, arch): _F32,
        key(Keys.Rope.SCALING_ORIG_CTX_LEN, arch): _U32,
    }


def f32(value: float) -> float:
    """``value`` rounded to float32, the precision GGUF stores rope floats in."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def f32_text(value: float) -> str:
    """The shortest decimal that reads back as the same float32 (e.g. ``436936.53``)."""
    value = f32(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if f32(float(text)) == value:
            return text
    return repr(value)


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
    layout: Optional[Tuple[int, int]]

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
    if entry is None or entry.type != _U32:
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
    layout = gguf.value(LAYOUT_KEY)
    layout = tuple(layout) if isinstance(layout, list) and len(layout) == 2 else None
    return Record(entry.value, version if isinstance(version, str) else "", originals, tuple(absent),
                  scaling if isinstance(scaling, dict) else {}, layout)


class OriginalValues:
    """A file's values as they were before pyntk's first edit (the record applied)."""

    def __init__(self, gguf: GGUFFile, record: Optional[Record]) -> None:
        self.gguf, self.record, self.path = gguf, record, gguf.path

    def value(self, name: str, default: Any = None) -> Any:
        if self.record is not None:
            original = self.record.originals.get(name)
            if original is not None:
                return original.value
            if name in self.record.absent:
                return default
        return self.gguf.value(name, default)


def read_original_rope(file_or_path) -> RopeInfo:
    """RoPE hyper-parameters as they were before any pyntk edit (as read_rope for unedited files)."""
    gguf = file_or_path if isinstance(file_or_path, GGUFFile) else GGUFFile(file_or_path, layout_key=LAYOUT_KEY)
    return read_rope(OriginalValues(gguf, read_record(gguf)))


# --- what to write -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The scaling gguf-set writes and the values llama.cpp will read afterwards."""

    scaling: RopeScaling
    context: int  # new ARCH.context_length
    supported_context: int  # what the scaling keeps in distribution (pyntk plan's criterion)
    freq_base: float  # as stored (float32)
    scaling_type: str
    factor: float  # as stored (float32)
    original_context: int  # L0, written as rope.scaling.original_context_length

    def to_dict(self) -> Dict[str, Any]:
        return {"scaling": self.scaling.to_dict(), "summary": self.scaling.describe(),
                "context": self.context, "supported_context": self.supported_context,
                "freq_base": self.freq_base, "scaling_type": self.scaling_type, "factor": self.factor,
                "original_context": self.original_context}


def _as_f32(value: float, what: str, fix: str = "") -> float:
    """``value`` rounded to float32 for the file; a ValueError if it does not fit."""
    try:
        stored = f32(value)
    except OverflowError:
        stored = math.inf
    if not math.isfinite(stored):
        raise ValueError(f"{what} {value:g} does not fit GGUF's float32 (at most 3.4e+38){fix}")
    return stored


def _check_scalable(original: RopeInfo) -> None:
    """Refuse, as a problem of the file, original values no scaling can start from (a context of 0,
    a base <= 1, odd dimensions): they would otherwise fail deep in the arithmetic."""
    try:
        RopeScaling(method="none", base=original.base, dims=original.dims,
                    original_context=original.original_context)
        _as_f32(original.base, "rope.freq_base")  # a float64 in the file may be past float32's range
    except ValueError as e:
        raise PyntkError(f"{original.path}: the model's own RoPE values cannot be scaled: {e}; the file is "
                         f"corrupt or was written by a broken converter") from None


def plan_target(original: RopeInfo, *, method: Optional[str] = None, alpha: Optional[float] = None,
                factor: Optional[float] = None, ctx: Optional[int] = None,
                base: Optional[float] = None) -> Target:
    """Resolve gguf-set's options against the model's ORIGINAL values.

    ``--ctx`` alone means ntk with the smallest alpha reaching it; ``--base`` alone means ntk with
    that base. The context written is ``ctx`` when given, else what the scaling supports.
    """
    _check_scalable(original)
    L0, b0, d = original.original_context, original.base, original.dims
    if method is None:
        if alpha is not None or base is not None:
            method = "ntk"
        elif factor is not None:
            method = "linear"
        elif ctx is not None:
            method = "ntk"
        else:
            raise ValueError("nothing to do: give --alpha A, --factor S, --ctx N or --base B "
                             "(e.g. --alpha 4), or --method none")
    if method not in FILE_METHODS:
        raise ValueError(f"llama.cpp cannot apply {method!r} from a GGUF file (it implements linear and "
                         f"yarn scaling, and static NTK through the base); use --method ntk, linear or yarn")
    given = {"--alpha": alpha, "--factor": factor, "--base": base, "--ctx": ctx}
    allowed = {"none": set(), "ntk": {"--alpha", "--base", "--ctx"},
               "linear": {"--factor", "--ctx"}, "yarn": {"--factor", "--ctx"}}[method]
    for option, value in given.items():
        if value is not None and option not in allowed:
            hint = {"none": "--method none restores unscaled RoPE and takes no parameters",
                    "ntk": "ntk takes --alpha, --base or --ctx",
                    "linear": "linear takes --factor or --ctx", "yarn": "yarn takes --factor or --ctx"}[method]
            raise ValueError(f"{option} does not apply to --method {method}: {hint}")
    if alpha is not None and base is not None:
        raise ValueError("give --alpha or --base, not both (--base B sets the NTK base directly)")
    if method == "ntk" and alpha is None and base is None and ctx is None:
        raise ValueError("--method ntk needs --alpha A, --base B or --ctx N (e.g. --alpha 4)")
    if method in ("linear", "yarn") and factor is None and ctx is None:
        raise ValueError(f"--method {method} needs --factor S or --ctx N (e.g. --factor 4)")
    if ctx is not None:
        if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx <= L0:
            raise ValueError(f"target context {ctx} is not above the model's training context {L0}; "
                             f"give a larger --ctx (e.g. --ctx {2 * L0})")
        if ctx > U32_MAX:
            raise ValueError(f"target context {ctx} does not fit GGUF's uint32 context_length")
    if alpha is not None and alpha < 1:
        raise ValueError(f"--alpha must be >= 1 (1 means no scaling, 2 to 8 are usual), got {alpha:g}")
    if factor is not None and factor < 1:
        raise ValueError(f"--factor must be >= 1 (it is target context / training context), got {factor:g}")

    common = dict(base=b0, dims=d)
    if method == "none":
        scaling = RopeScaling(method="none", **common)
        stored_base = f32(b0)
    elif method == "ntk":
        if base is not None:
            if base < b0:
                raise ValueError(f"--base {base:g} is below the model's base {b0:g}; NTK scaling raises "
                                 f"the base (try --base {b0 * 4:g})")
            alpha = (base / b0) ** ((d - 2) / d) if d > 2 else 1.0
        elif alpha is None:
            alpha = alpha_for_context(ctx, d, b0, L0)
        scaling = RopeScaling(method="ntk", alpha=alpha, **common)
        try:
            new_base = base if base is not None else scaling.ntk_base
        except OverflowError:  # alpha ** (d/(d-2)) past the largest double
            new_base = math.inf
        stored_base = _as_f32(new_base, "the new rope base", "; choose a smaller --alpha or --base")
    else:
        if factor is None:
            factor = ctx / L0
        extra = {"original_context": L0} if method == "yarn" else {}
        scaling = RopeScaling(method=method, factor=factor, **common, **extra)
        stored_base = f32(b0)
    stored_factor = _as_f32(scaling.factor, "--factor") if method in ("linear", "yarn") else 1.0
    supported = supported_context(scaling, L0)
    # Rounded down to llama.cpp's context padding: its default n_ctx (the training context, padded
    # up to a multiple of 256) then stays within what the scaling supports.
    context = ctx if ctx is not None else max(L0, supported // CTX_PAD * CTX_PAD)
    if context > U32_MAX:
        raise ValueError(f"the scaling supports {context} tokens, more than GGUF's uint32 context_length "
                         f"holds; choose a smaller --alpha/--factor or give --ctx")
    return Target(
        scaling=scaling, context=context, supported_context=supported, freq_base=stored_base,
        scaling_type=FILE_METHODS[method], factor=stored_factor, original_context=L0,
    )


# --- plans -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NewValue:
    type: GGUFValueType
    value: Any
    raw: bytes  # encoded value (without key and type)
    array_type: Optional[GGUFValueType] = None


def _new(vtype: GGUFValueType, value: Any, array_type: Optional[GGUFValueType] = None) -> NewValue:
    return NewValue(vtype, value, encode_value(vtype, value, array_type), array_type)


@dataclass(frozen=True)
class Change:
    """One key's change; ``old`` None means the key is added, ``new`` None that it is removed."""

    key: str
    old: Optional[Entry]
    old_value: Any
    new: Optional[NewValue]

    @property
    def in_place(self) -> bool:
        return (self.old is not None and self.new is not None and self.old.type == self.new.type
                and self.old.array_type == self.new.array_type and self.old.size == len(self.new.raw))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "key": self.key,
            "old": self.old_value if self.old is not None else None,
            "old_type": self.old.type.name if self.old is not None else None,
            "new": self.new.value if self.new is not None else None,
            "new_type": self.new.type.name if self.new is not None else None,
            "in_place": self.in_place,
        }


@dataclass
class EditPlan:
    """Everything an edit will do, computed before anything is written."""

    action: str  # "set" or "reset"
    source: str  # the model (symlinks resolved)
    output: str  # the file written: source, or -o OUT
    arch: str
    current: RopeInfo  # as llama.cpp reads the file now
    original: RopeInfo  # as it was before any pyntk edit
    target: Optional[Target]
    changes: List[Change]
    desired: Dict[str, Optional[NewValue]]  # key -> new value (None: remove), in insertion order
    in_place: bool
    reason: str  # why a rewrite, or "" when in place
    notes: List[str]
    file_size: int
    request: Dict[str, Any]
    record: Optional[Record] = None
    data_bytes: int = 0  # size of the tensor data section (what a rewrite copies)
    gguf: Optional[GGUFFile] = field(default=None, repr=False, compare=False)  # the parse planned on
    head: Optional[bytes] = field(default=None, repr=False, compare=False)  # its metadata bytes

    @property
    def nothing_to_do(self) -> bool:
        return not self.changes and self.output == self.source

    @property
    def mode(self) -> str:
        return "nothing" if self.nothing_to_do else ("in-place" if self.in_place else "rewrite")

    def signature(self) -> tuple:
        return tuple((c.key, None if c.old is None else (c.old.type, repr(c.old_value)),
                      None if c.new is None else c.new.raw) for c in self.changes)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "action": self.action,
            "file": self.source,
            "output": self.output,
            "arch": self.arch,
            "mode": self.mode,
            "reason": self.reason,
            "original": {"context_length": self.original.context_length, "base": self.original.base,
                         "dims": self.original.dims, "scaling_type": self.original.scaling_type,
                         "factor": self.original.factor,
                         "original_context": self.original.original_context},
            "target": self.target.to_dict() if self.target else None,
            "changes": [c.to_dict() for c in self.changes],
            "notes": list(self.notes),
        }


def _resolve_model(path) -> str:
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise PyntkError(f"{path}: no such file; check the path")
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise PyntkError(f"{path}: a broken symbolic link (to {real}); fix the link or give the real path")
    return real


def _resolve_output(source: str, output) -> str:
    if output is None:
        return source
    out = os.path.realpath(os.fspath(output))
    if os.path.isdir(out):
        raise PyntkError(f"{output}: is a directory; give the path of the .gguf file to write")
    return out


def _diff(gguf: GGUFFile, desired: Dict[str, Optional[NewValue]]) -> List[Change]:
    present = [k for k in desired if k in gguf.entries]
    raws = gguf.raw_values(present)
    changes = []
    for name, new in desired.items():
        old = gguf.entries.get(name)
        if old is None and new is None:
            continue
        if (old is not None and new is not None and old.type == new.type
                and old.array_type == new.array_type and raws[name] == new.raw):
            continue
        changes.append(Change(name, old, gguf.value(name) if old is not None else None, new))
    return changes


def _scaling_json(target: Target) -> str:
    s = target.scaling
    data = {"method": s.method, "alpha": s.alpha, "factor": s.factor, "base": target.freq_base,
            "context": target.context, "original_context": target.original_context,
            "summary": s.describe(), "pyntk": _pyntk_version()}
    text = json.dumps(data, separators=(",", ":"))
    width = -(-max(len(text.encode()), 1) // SCALING_WIDTH) * SCALING_WIDTH
    return text + " " * (width - len(text.encode()))


def _record_values(gguf: GGUFFile, arch: str, record: Optional[Record]) -> Dict[str, Optional[NewValue]]:
    """The pyntk.* keys to add: the originals on the first edit (and of keys no record covers yet)."""
    out: Dict[str, Optional[NewValue]] = {}
    managed = list(managed_keys(arch))
    uncovered = [k for k in managed if record is None or not record.covers(k)]
    if record is None:
        out[FORMAT_KEY] = _new(_U32, RECORD_FORMAT)
        out[VERSION_KEY] = _new(_STR, _pyntk_version())
    absent = list(record.absent) if record else []
    absent += [k for k in uncovered if k not in gguf.entries]
    if LAYOUT_KEY not in gguf.entries:
        out[LAYOUT_KEY] = _new(GGUFValueType.ARRAY, [0, 0], GGUFValueType.UINT64)  # filled in on write
    if absent and (record is None or list(record.absent) != absent):
        out[ABSENT_KEY] = _new(GGUFValueType.ARRAY, absent, _STR)
    present = [k for k in uncovered if k in gguf.entries]
    raws = gguf.raw_values(present)
    for name in present:
        e = gguf.entries[name]
        out[ORIGINAL_PREFIX + name] = NewValue(e.type, gguf.value(name), raws[name], e.array_type)
    return out


def _finish_plan(action, gguf, source, output, current, original, target, desired, notes, request,
                 record) -> EditPlan:
    changes = _diff(gguf, desired)
    if output != source:
        in_place, reason = False, f"writing a new file {output}"
    elif all(c.in_place for c in changes):
        in_place, reason = True, ""
    else:
        added = [c.key for c in changes if c.old is None]
        removed = [c.key for c in changes if c.new is None]
        resized = [c.key for c in changes if c.old is not None and c.new is not None and not c.in_place]
        parts = []
        if added:
            parts.append(f"{len(added)} key{'s' if len(added) > 1 else ''} added")
        if removed:
            parts.append(f"{len(removed)} key{'s' if len(removed) > 1 else ''} removed")
        if resized:
            parts.append("size of " + ", ".join(resized) + " changes")
        in_place, reason = False, "; ".join(parts)
    if not in_place and output == source and changes:
        links = os.stat(source).st_nlink
        if links > 1:
            notes.append(f"{source} has {links} hard links: the rewrite gives this path a new file and "
                         f"the other links keep the old content")
    plan = EditPlan(action, source, output, current.arch, current, original, target, changes, desired,
                    in_place, reason, notes, gguf.file_size, request, record,
                    max(0, gguf.file_size - gguf.data_offset))
    plan.gguf = gguf
    if not in_place and not gguf.partial:  # apply() re-validates a rewrite by comparing these bytes
        with open(source, "rb") as f:
            plan.head = f.read(gguf.data_offset)
    return plan


def plan_set(path, *, method: Optional[str] = None, alpha: Optional[float] = None,
             factor: Optional[float] = None, ctx: Optional[int] = None, base: Optional[float] = None,
             force: bool = False, output=None) -> EditPlan:
    """Plan ``pyntk gguf-set``: nothing is written."""
    request = dict(method=method, alpha=alpha, factor=factor, ctx=ctx, base=base, force=force, output=output)
    source = _resolve_model(path)
    return _plan_set(GGUFFile(source, layout_key=LAYOUT_KEY), source, request)


def _plan_set(gguf: GGUFFile, source: str, request: Dict[str, Any]) -> EditPlan:
    method, alpha, factor, ctx, base, force = (request[k] for k in ("method", "alpha", "factor", "ctx",
                                                                      "base", "force"))
    out = _resolve_output(source, request["output"])
    current = read_rope(gguf)
    record = read_record(gguf)
    original = read_rope(OriginalValues(gguf, record))
    arch = original.arch
    notes: List[str] = []
    if original.scaling_type == "longrope":
        raise PyntkError(f"{source}: uses LongRoPE (per-frequency factor tensors), which pyntk cannot "
                         f"rescale; use the model's own long-context variant")
    if original.finetuned:
        if not force:
            raise PyntkError(f"{source}: the model is already fine-tuned for a RoPE scaling "
                             f"({arch}.rope.scaling.finetuned = true); scaling it again usually hurts, "
                             f"pass --force to do it anyway")
        notes.append(f"--force: the model is marked {arch}.rope.scaling.finetuned; its own scaling is replaced")
    if original.factor != 1.0 and original.scaling_type != "none":
        notes.append(f"the model itself declares {original.scaling_type} scaling x{original.factor:g}; "
                     f"pyntk replaces it, computing from the training context {original.original_context}")
    target = plan_target(original, method=method, alpha=alpha, factor=factor, ctx=ctx, base=base)
    if ctx is not None and ctx > target.supported_context:
        notes.append(f"--ctx {ctx} is beyond the {target.supported_context} tokens "
                     f"{target.scaling.describe()} keeps in distribution (pyntk plan's criterion); "
                     f"expect quality to drop past that")
    if original.has_sliding_window:
        notes.append(f"{arch} has sliding-window layers: llama.cpp keeps their own rope base "
                     f"({arch}.rope.freq_base_swa = {original.base_swa:g}), so only the global layers change")
    if any(t.name == "rope_freqs.weight" for t in gguf.tensors) and target.scaling.method != "none":
        notes.append("the model has per-frequency rope factors (rope_freqs.weight, Llama 3.1 style); "
                     "llama.cpp applies them on top of the new values")
    values = {
        key(Keys.LLM.CONTEXT_LENGTH, arch): target.context,
        key(Keys.Rope.FREQ_BASE, arch): target.freq_base,
        key(Keys.Rope.SCALING_TYPE, arch): target.scaling_type,
        key(Keys.Rope.SCALING_FACTOR, arch): target.factor,
        key(Keys.Rope.SCALING_ORIG_CTX_LEN, arch): target.original_context,
    }
    desired: Dict[str, Optional[NewValue]] = {k: _new(t, values[k]) for k, t in managed_keys(arch).items()}
    desired[SCALING_KEY] = _new(_STR, _scaling_json(target))
    current_json = gguf.value(SCALING_KEY)
    if isinstance(current_json, str):
        try:  # keep pyntk.scaling unchanged when only the pyntk version in it would differ
            old = json.loads(current_json)
            new = json.loads(desired[SCALING_KEY].value)
            if isinstance(old, dict) and ({k: v for k, v in old.items() if k != "pyntk"}
                                          == {k: v for k, v in new.items() if k != "pyntk"}):
                desired[SCALING_KEY] = _new(_STR, current_json)
        except ValueError:
            pass
    desired.update(_record_values(gguf, arch, record))
    return _finish_plan("set", gguf, source, out, current, original, target, desired, notes, request, record)


def plan_reset(path, *, output=None) -> EditPlan:
    """Plan ``pyntk gguf-reset``: restore every recorded value, remove pyntk's keys."""
    source = _resolve_model(path)
    return _plan_reset(GGUFFile(source, layout_key=LAYOUT_KEY), source, dict(output=output))


def _plan_reset(gguf: GGUFFile, source: str, request: Dict[str, Any]) -> EditPlan:
    out = _resolve_output(source, request["output"])
    record = read_record(gguf)
    current = read_rope(gguf)
    original = read_rope(OriginalValues(gguf, record))
    notes: List[str] = []
    desired: Dict[str, Optional[NewValue]] = {}
    if record is None:
        notes.append("no pyntk record in this file: it was never edited by pyntk gguf-set, or was reset already")
    else:
        for name, o in record.originals.items():
            desired[name] = NewValue(o.type, o.value, o.raw, o.array_type)
        for name in record.absent:
            desired[name] = None
        for name in gguf.entries:
            if name.startswith(RECORD_PREFIX):
                desired[name] = None
    return _finish_plan("reset", gguf, source, out, current, original, None, desired, notes, request, record)


def _replan(plan: EditPlan, gguf: GGUFFile) -> EditPlan:
    if plan.action == "set":
        return _plan_set(gguf, plan.source, plan.request)
    return _plan_reset(gguf, plan.source, plan.request)


# --- applying ----------------------------------------------------------------------------------

@dataclass
class EditResult:
    plan: EditPlan
    mode: str  # "in-place", "rewrite" or "nothing"
    seconds: float
    bytes_written: int
    removed_temps: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "seconds": self.seconds, "bytes_written": self.bytes_written,
                "removed_temporary_files": list(self.removed_temps)}


def _free_bytes(directory: str) -> int:
    return shutil.disk_usage(directory).free


def _writable_bits(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
    except (AttributeError, OSError):
        return False


def check_writable(plan: EditPlan) -> None:
    """Refuse, naming the fix, when the edit could not be written."""
    if plan.in_place or plan.output == plan.source:
        st = os.stat(plan.source)
        if _read_only_fs(plan.source):
            raise PyntkError(f"{plan.source}: is on a read-only file system; write an edited copy "
                             f"elsewhere with -o OUT.gguf")
        if not _writable_bits(st) or not os.access(plan.source, os.W_OK):
            raise PyntkError(f"{plan.source}: the file is read-only; make it writable (chmod u+w) "
                             f"or write an edited copy with -o OUT.gguf")
    if not plan.in_place:
        directory = os.path.dirname(plan.output) or "."
        if not os.path.isdir(directory):
            raise PyntkError(f"{directory}: no such directory for the output; create it first")
        dst = os.stat(directory)
        if _read_only_fs(directory):
            raise PyntkError(f"{directory}: is on a read-only file system; write the edited copy "
                             f"elsewhere with -o OUT.gguf")
        if not _writable_bits(dst) or not os.access(directory, os.W_OK | os.X_OK):
            raise PyntkError(f"{directory}: the directory is read-only, so the edited file cannot be "
                             f"written beside the original; make it writable (chmod u+w) or write the "
                             f"copy elsewhere with -o OUT.gguf")


@contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive flock on ``path``'s current inode; refuses at once if another edit holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run one edit at a time
        yield
        return
    while True:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PyntkError(f"{path}: another pyntk process is editing this file right now; wait "
                                 f"for it to finish, then run the command again") from None
            raise
        st = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            raise PyntkError(f"{path}: the file disappeared while pyntk was locking it; check the path") from None
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            break
        os.close(fd)  # replaced by another edit in the meantime: lock the new file
    try:
        yield
    finally:
        os.close(fd)


def temp_name(output: str, pid: Optional[int] = None) -> str:
    directory, name = os.path.split(output)
    return os.path.join(directory, f".{name}{TEMP_MARK}{os.getpid() if pid is None else pid}")


def stale_temps(output: str, *, own: bool = False) -> List[str]:
    """Temporary files of interrupted edits of ``output`` (their process is gone).

    ``own`` counts one named with this process's id as stale too: right only under the edit lock,
    before this edit creates its own (a process started again in a fresh container often gets the
    id of the one that was killed, and O_EXCL would then refuse every later rewrite).
    """
    directory, name = os.path.split(output)
    prefix = f".{name}{TEMP_MARK}"
    found = []
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    for entry in names:
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):])
        except ValueError:
            continue
        if (own and pid == os.getpid()) or (pid != os.getpid() and not _alive(pid)):
            found.append(os.path.join(directory, entry))
    return found


def remove_stale_temps(output: str, *, own: bool = False) -> List[str]:
    """Delete ``stale_temps(output)``; returns those removed."""
    removed = []
    for stale in stale_temps(output, own=own):
        try:
            os.unlink(stale)
            removed.append(stale)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def apply(plan: EditPlan, *, progress: Optional[Callable[[int], None]] = None) -> EditResult:
    """Carry out a plan: re-check it under the lock, then patch in place or rewrite atomically."""
    started = time.perf_counter()
    if plan.nothing_to_do:  # still clear up after an interrupted edit, unless an edit is under way
        try:
            with _locked(plan.source):
                removed = remove_stale_temps(plan.output, own=True)
        except PyntkError:  # another edit holds the lock: a temporary file may be its own
            removed = []
        return EditResult(plan, "nothing", 0.0, 0, removed)
    check_writable(plan)
    with _locked(plan.source):
        # Re-validate under the lock: an in-place edit re-parses (cheap with the layout hint); a
        # rewrite, which needs the whole parse anyway, reuses the plan's if the metadata bytes and
        # the size are unchanged, else parses again.
        if plan.in_place:
            fresh = _replan(plan, GGUFFile(plan.source, layout_key=LAYOUT_KEY))
        elif plan.head is not None and _unchanged(plan):
            fresh = plan
        else:
            fresh = _replan(plan, GGUFFile(plan.source))
        if fresh.signature() != plan.signature() or fresh.output != plan.output:
            raise PyntkError(f"{plan.source}: the file changed while this edit was being prepared; "
                             f"run the command again")
        removed = remove_stale_temps(fresh.output, own=True)
        if fresh.in_place:
            written = _patch(fresh)
            mode = "in-place"
        else:
            written = _rewrite(fresh, progress)
            mode = "rewrite"
    return EditResult(fresh, mode, time.perf_counter() - started, written, removed)


def _unchanged(plan: EditPlan) -> bool:
    with open(plan.source, "rb") as f:
        return os.fstat(f.fileno()).st_size == plan.file_size and f.read(len(plan.head)) == plan.head


def _patch(plan: EditPlan) -> int:
    """Write the changed values over the old ones: one pwrite spanning them all, then fsync."""
    lo = min(c.old.value_start for c in plan.changes)
    hi = max(c.old.end for c in plan.changes)
    fd = os.open(plan.source, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        span = bytearray(os.pread(fd, hi - lo, lo))
        if len(span) != hi - lo:
            raise PyntkError(f"{plan.source}: the file shrank while being edited; check it and run again")
        for c in plan.changes:
            span[c.old.value_start - lo:c.old.end - lo] = c.new.raw
        if os.pwrite(fd, bytes(span), lo) != len(span):  # pragma: no cover - a short write of < 1 page
            raise OSError(errno.EIO, "short write")
        os.fsync(fd)
    finally:
        os.close(fd)
    return hi - lo


def _needed_by_pyntk(name: str, arch: str) -> bool:
    return (name in (Keys.General.ARCHITECTURE, Keys.General.ALIGNMENT)
            or name.startswith(arch + ".") or name.startswith(RECORD_PREFIX))


def _anchor(entries: List[Entry], arch: str) -> int:
    """Index after which new keys go: after the architecture's block, before the vocabulary."""
    first_big = next((i for i, e in enumerate(entries) if e.array_type is not None and e.value is None), None)
    limit = len(entries) if first_big is None else first_big
    arch_keys = [i for i in range(limit) if entries[i].key.startswith(arch + ".")]
    if arch_keys:
        return arch_keys[-1]
    return limit - 1


def build_metadata(src: GGUFFile, desired: Dict[str, Optional[NewValue]], arch: str) -> Tuple[bytes, int]:
    """The new file's header, key/values, tensor infos and padding; and the data offset in it.

    Unchanged entries and the tensor infos are copied byte for byte (tensor offsets are relative to
    the data section); new keys go after the architecture's block.
    """
    if src.partial:
        raise ValueError("build_metadata needs a fully parsed file")
    entries = list(src.entries.values())
    with open(src.path, "rb") as f:
        head = f.read(src.data_offset)
    pieces: List[Tuple[str, bytes]] = []
    new_keys = [(k, v) for k, v in desired.items() if v is not None and k not in src.entries]
    anchor = _anchor(entries, arch)

    def encode(name: str, v: NewValue) -> bytes:
        return encode_value(_STR, name) + struct.pack("<I", int(v.type)) + v.raw

    if anchor < 0:
        pieces.extend((k, encode(k, v)) for k, v in new_keys)
    for i, e in enumerate(entries):
        if e.key in desired:
            v = desired[e.key]
            if v is not None:
                pieces.append((e.key, encode(e.key, v)))
        elif e.key == LAYOUT_KEY:  # filled in below; one of another type (a damaged file) is replaced
            pieces.append((e.key, encode_entry(e.key, GGUFValueType.ARRAY, [0, 0], GGUFValueType.UINT64)))
        else:
            pieces.append((e.key, head[e.start:e.end]))
        if i == anchor:
            pieces.extend((k, encode(k, v)) for k, v in new_keys)
    header_size = 4 + 4 + 8 + 8
    offset, prefix_end, layout_index = header_size, header_size, None
    for index, (name, raw) in enumerate(pieces):
        offset += len(raw)
        if _needed_by_pyntk(name, arch):
            prefix_end = offset
        if name == LAYOUT_KEY:
            layout_index = index
    kv_end = offset
    if layout_index is not None:
        raw = encode_entry(LAYOUT_KEY, GGUFValueType.ARRAY, [prefix_end, kv_end], GGUFValueType.UINT64)
        assert len(raw) == len(pieces[layout_index][1])
        pieces[layout_index] = (LAYOUT_KEY, raw)
    header = head[:8] + struct.pack("<QQ", src.tensor_count, len(pieces))
    infos = head[src.kv_end:src.tensor_info_end]
    meta = b"".join([header] + [raw for _, raw in pieces] + [infos])
    data_offset = -(-len(meta) // src.alignment) * src.alignment
    pad = data_offset - len(meta)
    old_pad = head[src.tensor_info_end:src.data_offset]
    padding = old_pad if len(old_pad) == pad else b"\0" * pad
    return meta + padding, data_offset


def _check_space(directory: str, needed: int) -> None:
    free = _free_bytes(directory)
    if free < needed + SPACE_MARGIN:
        raise PyntkError(f"{directory}: not enough free disk space for the rewrite (needs "
                         f"{_size(needed + SPACE_MARGIN)}, {_size(free)} free); free some space or write "
                         f"the edited copy to another disk with -o OUT.gguf")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int,
                progress: Optional[Callable[[int], None]]) -> None:
    """Copy bytes between files: copy_file_range (in-kernel, reflinks where supported), else pread/pwrite.

    Each finished chunk is handed to the kernel for write-back at once (POSIX_FADV_DONTNEED starts
    it and drops the pages): the disk writes while the next chunk is copied, the final fsync has
    less left to do, and a multi-GiB rewrite does not fill the page cache with dirty pages.
    """
    use_kernel = hasattr(os, "copy_file_range")
    advise = getattr(os, "posix_fadvise", None)
    previous = None
    while length > 0:
        n = min(COPY_CHUNK, length)
        done = 0
        if use_kernel:
            try:
                done = os.copy_file_range(src_fd, dst_fd, n, src_off, dst_off)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                use_kernel = False
                continue
        else:
            block = os.pread(src_fd, n, src_off)
            done = os.pwrite(dst_fd, block, dst_off) if block else 0
        if done <= 0:
            raise PyntkError("the model file ended early while its tensor data was being copied; the "
                             "original is untouched, check it with `pyntk info`")
        if advise is not None and previous is not None:
            try:
                advise(dst_fd, previous[0], previous[1], os.POSIX_FADV_DONTNEED)
            except OSError:  # pragma: no cover - advice only
                advise = None
        previous = (dst_off, done)
        src_off += done
        dst_off += done
        length -= done
        if progress is not None:
            progress(done)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _rewrite(plan: EditPlan, progress: Optional[Callable[[int], None]]) -> int:
    src = plan.gguf if plan.gguf is not None and not plan.gguf.partial else GGUFFile(plan.source)
    meta, data_offset = build_metadata(src, plan.desired, plan.arch)
    data_len = max(0, src.file_size - src.data_offset)
    new_size = data_offset + data_len
    directory = os.path.dirname(plan.output) or "."
    _check_space(directory, new_size)
    st = os.stat(plan.source)
    tmp = temp_name(plan.output)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            view = memoryview(meta)
            while view:
                view = view[os.write(fd, view):]
            with open(plan.source, "rb") as fsrc:
                _copy_range(fsrc.fileno(), fd, src.data_offset, data_offset, data_len, progress)
            os.fsync(fd)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
            except (OSError, AttributeError):
                pass
        finally:
            os.close(fd)
        _verify(tmp, src, data_offset, new_size)
        os.replace(tmp, plan.output)
    except OSError as e:
        _unlink(tmp)
        if e.errno == errno.ENOSPC:
            raise PyntkError(f"{directory}: the disk filled up while writing the edited file; the "
                             f"original is untouched; free some space or use -o on another disk") from None
        raise
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(directory)
    return new_size


def _verify(tmp: str, src: GGUFFile, data_offset: int, new_size: int) -> None:
    """Re-read the new file before it replaces anything: same tensors, data where expected."""
    new = GGUFFile(tmp, layout_key=LAYOUT_KEY)  # the vocabulary was copied verbatim
    same = ([(t.name, t.shape, t.type, t.offset) for t in new.tensors]
            == [(t.name, t.shape, t.type, t.offset) for t in src.tensors])
    if not same or new.data_offset != data_offset or new.file_size != new_size:
        raise PyntkError(f"internal error: the rewritten file {tmp} did not verify; the original is "
                         f"untouched (please report this)")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- the same scaling at run time ----------------------------------------------------------------

def runtime_settings(target: Target, arch: str, *, beta_fast: Optional[float] = None,
                     beta_slow: Optional[float] = None, attn_factor: Optional[float] = None) -> Dict[str, Any]:
    """llama.cpp flags, the --override-kv form and llama-cpp-python kwargs equivalent to gguf-set.

    Every value is given explicitly, so they override whatever the file holds. The context length
    override lifts llama-server's cap of a slot at the file's training context.
    """
    base = f32_text(target.freq_base)
    factor = f32_text(target.factor)
    ctx_key = key(Keys.LLM.CONTEXT_LENGTH, arch)
    flags = ["-c", str(target.context), "--rope-scaling", target.scaling_type, "--rope-freq-base", base,
             "--rope-scale", factor, "--yarn-orig-ctx", str(target.original_context),
             "--override-kv", f"{ctx_key}=int:{target.context}"]
    kwargs: Dict[str, Any] = {
        "n_ctx": target.context,
        "rope_scaling_type": LLAMA_CPP_TYPES.index(target.scaling_type),
        "rope_freq_base": target.freq_base,
        "rope_freq_scale": f32(1.0 / target.factor),
        "yarn_orig_ctx": target.original_context,
        "kv_overrides": {ctx_key: target.context},
    }
    for name, value in (("beta_fast", beta_fast), ("beta_slow", beta_slow)):
        if value is not None:
            flags += [f"--yarn-{name.replace('_', '-')}", f"{value:g}"]
            kwargs[f"yarn_{name}"] = value
    if attn_factor is not None:
        # llama.cpp recomputes its yarn_attn_factor parameter from the factor (llama-context.cpp),
        # so only the file key, multiplied in afterwards, changes the temperature.
        attn_key = key(Keys.Rope.SCALING_ATTN_FACTOR, arch)
        flags += ["--override-kv", f"{attn_key}=float:{attn_factor:g}"]
        kwargs["kv_overrides"][attn_key] = float(attn_factor)
    override = ["-c", str(target.context)]
    for name, value in (
        (ctx_key, f"int:{target.context}"),
        (key(Keys.Rope.FREQ_BASE, arch), f"float:{base}"),
        (key(Keys.Rope.SCALING_TYPE, arch), f"str:{target.scaling_type}"),
        (key(Keys.Rope.SCALING_FACTOR, arch), f"float:{factor}"),
        (key(Keys.Rope.SCALING_ORIG_CTX_LEN, arch), f"int:{target.original_context}"),
    ):
        override += ["--override-kv", f"{name}={value}"]
    return {"llama_cpp_flags": flags, "override_kv": override, "llama_cpp_python": kwargs}
