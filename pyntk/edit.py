"""Edit plans for gguf-set and gguf-reset: the values to write (llama.cpp's keys from the
llama.cpp contract, pyntk's record of the originals), diffed against the file, in place or not.
Nothing here writes: pyntk.writer carries a plan out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from gguf import GGUFValueType

from . import llamacpp
from .errors import PyntkError
from .gguf_file import Entry, GGUFFile, encode_value
from .llamacpp import LlamaRope, RopeView, f32
from .record import (ABSENT_KEY, FORMAT_KEY, LAYOUT_KEY, ORIGINAL_PREFIX, RECORD_FORMAT, RECORD_PREFIX,
                     SCALING_KEY, SCALING_WIDTH, VERSION_KEY, OriginalValues, Record, pyntk_version,
                     read_record)
from .scaling import USES, RopeScaling, needs_context
from .target import Target, beyond_measured, plan_target

_U32, _STR = GGUFValueType.UINT32, GGUFValueType.STRING

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
    current: RopeView  # as llama.cpp reads the file now
    original: RopeView  # as it was before any pyntk edit
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
    """pyntk.scaling: the whole scaling (changed_since rebuilds what was written from it), the base
    and context written; method, alpha and factor also at the top, where pyntk before the whole
    scaling was recorded reads them."""
    s = target.scaling
    data = {"scaling": s.to_dict(), "method": s.method, "alpha": s.alpha, "factor": s.factor,
            "base": target.rope.freq_base, "context": target.context,
            "original_context": target.rope.original_context, "summary": s.describe(), "pyntk": pyntk_version()}
    text = json.dumps(data, separators=(",", ":"))
    width = -(-max(len(text.encode()), 1) // SCALING_WIDTH) * SCALING_WIDTH
    return text + " " * (width - len(text.encode()))


def _record_values(gguf: GGUFFile, arch: str, record: Optional[Record]) -> Dict[str, Optional[NewValue]]:
    """The pyntk.* keys to add: the originals on the first edit (and of keys no record covers yet)."""
    out: Dict[str, Optional[NewValue]] = {}
    managed = list(llamacpp.file_key_types(arch))
    uncovered = [k for k in managed if record is None or not record.covers(k)]
    if record is None:
        out[FORMAT_KEY] = _new(_U32, RECORD_FORMAT)
        out[VERSION_KEY] = _new(_STR, pyntk_version())
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
                 record, unchanged: str = "the file already has these values") -> EditPlan:
    changes = _diff(gguf, desired)
    links = os.stat(source).st_nlink
    if not changes:
        in_place, reason = output == source, unchanged
    elif output != source:
        in_place, reason = False, f"writing a new file {output}"
    elif links > 1:
        # One behaviour for every edit: only the path named is edited. In place, the other links
        # would change too; a rewrite gives this path a file of its own.
        in_place, reason = False, f"{source} has {links} hard links and only this path is edited"
        notes.append(f"{source} has {links} hard links: pyntk edits only this path, which gets a file of "
                     f"its own (a rewrite, needing the disk space of a copy); the other {links - 1} keep "
                     f"the old content")
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
    plan = EditPlan(action, source, output, current.arch, current, original, target, changes, desired,
                    in_place, reason, notes, gguf.file_size, request, record,
                    max(0, gguf.file_size - gguf.data_offset))
    plan.gguf = gguf
    if not in_place and not gguf.partial:  # apply() re-validates a rewrite by comparing these bytes
        with open(source, "rb") as f:
            plan.head = f.read(gguf.data_offset)
    return plan


def _runs(view: RopeView, rope: LlamaRope) -> tuple:
    """What llama.cpp computes for a file holding ``rope``: each layer's base and scale, YaRN's
    ramp when it is on, and the cos/sin multiplier."""
    yarn = (rope.original_context, rope.beta_fast, rope.beta_slow) if rope.ext_factor else None
    layers = [(layer.freq_base, layer.freq_scale) for layer in view.layer_ropes(rope, in_file=True)]
    return layers, rope.ext_factor, yarn, f32(rope.cos_sin_scale)


def plan_set(path, *, method: Optional[str] = None, alpha: Optional[float] = None,
             factor: Optional[float] = None, ctx: Optional[int] = None, base: Optional[float] = None,
             attn_factor: Optional[float] = None, force: bool = False, output=None) -> EditPlan:
    """Plan ``pyntk gguf-set``: nothing is written."""
    request = dict(method=method, alpha=alpha, factor=factor, ctx=ctx, base=base, attn_factor=attn_factor,
                   force=force, output=output)
    source = _resolve_model(path)
    return _plan_set(GGUFFile(source, layout_key=LAYOUT_KEY), source, request)


def layer_notes(original: RopeView, target: Target, *, in_file: bool = True) -> List[str]:
    """What llama.cpp does beyond the global layers' values, written into the file (gguf-set) or
    given at run time (args)."""
    notes = [note for note in [original.window_note(target.rope, in_file=in_file)] if note]
    if original.rope_freqs and target.scaling.method != "none":
        notes.append("the model has per-frequency rope factors (rope_freqs.weight, Llama 3.1 style); "
                     "llama.cpp applies them on top of the new values")
    return notes


def _plan_set(gguf: GGUFFile, source: str, request: Dict[str, Any]) -> EditPlan:
    method, alpha, factor, ctx, base, force = (request[k] for k in ("method", "alpha", "factor", "ctx",
                                                                      "base", "force"))
    attn_factor = request.get("attn_factor")
    out = _resolve_output(source, request["output"])
    current = llamacpp.read(gguf)
    record = read_record(gguf)
    original = llamacpp.read(OriginalValues(gguf, record))
    arch = original.arch
    notes: List[str] = []
    if original.yarn_keys:
        raise PyntkError(f"{source}: sets {', '.join(original.yarn_keys)}, which llama.cpp would apply on "
                         f"top of any scaling pyntk writes; remove them first (gguf-py's "
                         f"gguf_new_metadata.py --remove-metadata)")
    if original.finetuned:
        if not force:
            raise PyntkError(f"{source}: the model is already fine-tuned for a RoPE scaling "
                             f"({arch}.rope.scaling.finetuned = true); scaling it again usually hurts, "
                             f"pass --force to do it anyway")
        notes.append(f"--force: the model is marked {arch}.rope.scaling.finetuned; its own scaling is replaced")
    if original.factor != 1.0 and original.scaling_type != "none":
        notes.append(f"the model itself declares {original.scaling_type} scaling x{original.factor:g}; "
                     f"pyntk replaces it, computing from the training context {original.original_context}")
    target = plan_target(original, method=method, alpha=alpha, factor=factor, ctx=ctx, base=base,
                         attn_factor=attn_factor, force=force)
    if record is None and out == source and target.context == current.context_length \
            and _runs(current, current.rope()) == _runs(current, target.rope):
        # e.g. --alpha 1 or --method none on an unscaled model: no pyntk record is written either
        why = f"llama.cpp already runs this model that way ({target.scaling.describe()})"
        return _finish_plan("set", gguf, source, out, current, original, target, {}, notes, request,
                            record, unchanged=why)
    beyond = beyond_measured(target)
    if beyond:
        notes.append(f"--force: {beyond}")
    if ctx is not None and ctx > target.supported_context:
        notes.append(f"--ctx {ctx} is beyond the {target.supported_context} tokens "
                     f"{target.scaling.describe()} keeps in distribution (pyntk plan's criterion); "
                     f"expect quality to drop past that")
    if target.why:
        notes.append(f"--ctx {ctx}: {target.scaling.describe()}, pyntk plan's recommendation: {target.why}")
    notes.extend(layer_notes(original, target))
    types = llamacpp.file_key_types(arch)
    values = llamacpp.file_values(target.rope, arch, target.context)
    desired: Dict[str, Optional[NewValue]] = {k: _new(types[k], v) for k, v in values.items()}
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
    current = llamacpp.read(gguf)
    original = llamacpp.read(OriginalValues(gguf, record))
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


def _recorded_scaling(s: Dict[str, Any], original: RopeView) -> RopeScaling:
    """The scaling pyntk.scaling records. Records written before it held the whole scaling have
    only method, alpha and factor: every other parameter was its default then, except yarn's
    attn_factor, which those records lost."""
    if "scaling" in s:
        return RopeScaling(**s["scaling"])
    method = s["method"]
    params = {name: s[name] for name in ("alpha", "factor") if name in USES[method]}
    if needs_context(method):
        params["original_context"] = s["original_context"]
    return RopeScaling(method=method, base=original.base, dims=original.dims, **params)


def changed_since(gguf: GGUFFile, record: Record) -> Optional[List[Tuple[str, Any, Any]]]:
    """The keys pyntk's last edit wrote that hold another value now (another tool changed them
    after it): (key, value now or None when removed, value pyntk wrote). What was written is
    derived again from pyntk.scaling through the one mapping; None when pyntk.scaling cannot say."""
    s = record.scaling
    original = llamacpp.read(OriginalValues(gguf, record))
    try:
        scaling = _recorded_scaling(s, original)
        # the base exactly as written (--base B is not alpha's round trip)
        base = llamacpp.checked_f32(s["base"], "pyntk.scaling's base")
        rope = replace(llamacpp.with_context(llamacpp.to_llama(scaling), original), freq_base=base)
        written = llamacpp.file_values(rope, original.arch, s["context"])
    except (KeyError, TypeError, ValueError, PyntkError):
        return None
    types = llamacpp.file_key_types(original.arch)
    written = {k: v for k, v in written.items() if record.covers(k)}  # an older pyntk wrote fewer keys
    now = gguf.raw_values([k for k in written if k in gguf.entries])
    changed = []
    for name, value in written.items():
        entry = gguf.entries.get(name)
        if entry is None or entry.type != types[name] or now[name] != _new(types[name], value).raw:
            changed.append((name, gguf.value(name), value))
    return changed


def replan(plan: EditPlan, gguf: GGUFFile) -> EditPlan:
    """The same request planned again on a fresh parse (the writer re-checks under its lock)."""
    if plan.action == "set":
        return _plan_set(gguf, plan.source, plan.request)
    return _plan_reset(gguf, plan.source, plan.request)

