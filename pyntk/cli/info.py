"""`pyntk info MODEL.gguf`: the RoPE and context settings llama.cpp will use."""

from __future__ import annotations

import os
import shlex

from gguf import Keys

from .. import llamacpp
from ..edit import changed_since
from ..errors import PyntkError
from ..llamacpp import WINDOW_RULES, f32_text
from ..record import LAYOUT_KEY, read_original, read_record
from ..writer import human_size, stale_temps
from ..gguf_file import GGUFFile
from ._common import add_command, add_json, print_json


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="show a model's RoPE and context settings as llama.cpp reads them",
        description="Show the RoPE and context settings of a GGUF model exactly as llama.cpp will "
        "use them with no runtime flags: absent keys are shown with llama.cpp's defaults and "
        "marked '(default)'.",
    )
    p.add_argument("model", help="path of a .gguf file")
    add_json(p)


def _effective(info) -> dict:
    try:
        scaling = info.scaling()
    except PyntkError as e:
        return {"method": None, "summary": str(e).split(": ", 1)[-1]}
    # The base does the work of static NTK, so say which base llama.cpp will use.
    return {"method": scaling.method, "summary": f"{scaling.describe()}, base {scaling.base:g}"}


def _shown(value) -> str:
    if value is None:
        return "absent"
    return f32_text(value) if isinstance(value, float) else str(value)


def _record_rows(record, changed, path) -> list:
    """pyntk's record of the original values (files edited by pyntk gguf-set), and the values
    another tool changed since (``changed``: edit.changed_since's answer)."""
    s = record.scaling
    summary = s.get("summary", "?")
    if "context" in s and "original_context" in s:
        summary += f", context {s['original_context']} -> {s['context']}"
    rows = [("pyntk edit", summary, f"  (originals recorded by pyntk {record.version or '?'})")]
    if changed is None:
        rows.append(("", "pyntk.scaling is unreadable, so pyntk cannot tell whether another tool changed "
                         "the values since", ""))
    for name, now, written in changed or ():
        rows.append(("  CHANGED", f"{name} = {_shown(now)}, pyntk wrote {_shown(written)}",
                     "  (by another tool after pyntk's edit; gguf-reset still restores the originals)"))
    for name, original in record.originals.items():
        value = f32_text(original.value) if original.type.name == "FLOAT32" else original.value
        rows.append(("  original", f"{name} = {value}", ""))
    for name in record.absent:
        rows.append(("  original", f"{name} absent", ""))
    rows.append(("  undo with", shlex.join(["pyntk", "gguf-reset", path]), ""))
    return rows


def _temp_rows(temps) -> list:
    rows = []
    for temp in temps:
        try:
            size = human_size(os.path.getsize(temp))
        except OSError:
            size = "?"
        rows.append(("stale temp file", temp, f"  ({size}, left by an interrupted edit)"))
    if temps:
        rows.append(("  remove with", shlex.join(["rm", "--", *temps]),
                     "  (or any pyntk edit in this directory removes them)"))
    return rows


def _context_rows(info, gguf, record) -> list:
    """llama.cpp calls context_length the training context (n_ctx_train); after a pyntk edit it
    is the new context, and the training context is the original recorded by pyntk."""
    if record is None:
        return [("training context", info.context_length, "")]
    trained = read_original(gguf).context_length
    return [("context length", info.context_length, "  (written by pyntk gguf-set)"),
            ("training context", trained, "  (the model's own, before pyntk's edit)")]


def run(args) -> int:
    gguf = GGUFFile(args.model, layout_key=LAYOUT_KEY)
    info = llamacpp.read(gguf)
    record = read_record(gguf)
    data = info.to_dict()
    data["effective_scaling"] = _effective(info)
    data["pyntk"] = record.to_dict() if record is not None else None
    changed = changed_since(gguf, record) if record is not None else None
    if record is not None:
        data["pyntk"]["changed_since"] = None if changed is None else [
            {"key": name, "value": now, "written": written} for name, now, written in changed]
    temps = stale_temps(os.path.dirname(os.path.realpath(gguf.path)))
    data["stale_temporary_files"] = temps
    data["remove_stale_temporary_files"] = shlex.join(["rm", "--", *temps]) if temps else None
    if args.json:
        print_json(data)
        return 0
    a = info.arch
    rope = info.rope()

    def mark(template: str) -> str:
        return "  (default)" if llamacpp.key(template, a) in info.defaulted else ""

    scaling_type = info.scaling_type + mark(Keys.Rope.SCALING_TYPE)
    if rope.freq_scale == 1.0 and info.scaling_type != "yarn":
        scaling_type += "  (factor 1: no scaling)"
    rows = [
        ("file", info.path, ""),
        ("architecture", f"{a} (rope mode {info.mode or 'unknown to pyntk'})", ""),
        *_context_rows(info, gguf, record),
        *([("attention heads", f"{info.head_count} (kv {info.head_count_kv})", "")] if info.head_count else []),
        ("rotary dims", info.dims, mark(Keys.Rope.DIMENSION_COUNT)),
        ("rope base", f32_text(info.base), mark(Keys.Rope.FREQ_BASE)),
        ("scaling type", scaling_type, ""),
        ("scaling factor", f"{info.factor:g}", mark(Keys.Rope.SCALING_FACTOR)),
        ("original context", info.original_context, mark(Keys.Rope.SCALING_ORIG_CTX_LEN)),
        ("attn factor", f"{info.attn_factor:g}", mark(Keys.Rope.SCALING_ATTN_FACTOR)
         + ("  (llama.cpp multiplies cos/sin by it)" if info.attn_factor != 1.0 else "")),
        ("finetuned", "yes" if info.finetuned else "no", mark(Keys.Rope.SCALING_FINETUNED)),
        ("llama.cpp runs", f"freq_base {f32_text(rope.freq_base)}, freq_scale {f32_text(rope.freq_scale)}, "
                           f"ext_factor {rope.ext_factor:g}, cos/sin x{rope.cos_sin_scale:.6g}", ""),
    ]
    if info.has_sliding_window:
        n = len(info.window_layers)
        rows.append(("sliding window", f"{info.sliding_window} tokens on {n} of {info.layers} layers", ""))
        first = next(layer for layer in info.layer_ropes(in_file=True) if layer.window)
        rows.append(("  window layers' rope", f"base {f32_text(first.freq_base)}, scale {f32_text(first.freq_scale)}",
                     mark(Keys.Rope.FREQ_BASE_SWA) + f"  ({WINDOW_RULES[info.arch].follows()})"))
    if info.rope_freqs:
        rows.append(("rope_freqs tensor", "yes", "  (per-pair factors, applied on top of the scaling)"))
    if info.longrope:
        rows.append(("LongRoPE tensors", "yes", "  (rope_factors_long/short: pyntk does not model them)"))
    for name in info.yarn_keys:
        rows.append(("yarn key", f"{name} = {gguf.value(name)}", "  (not modelled by pyntk)"))
    rows.append(("effective scaling", data["effective_scaling"]["summary"], ""))
    if record is not None:
        rows.extend(_record_rows(record, changed, args.model))
    rows.extend(_temp_rows(temps))
    width = max(len(r[0]) for r in rows)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value}{note}")
    return 0
