"""`pyntk info MODEL.gguf`: the RoPE and context settings llama.cpp will use."""

from __future__ import annotations

import os

from ..gguf_edit import LAYOUT_KEY, f32, f32_text, read_record, read_rope, stale_temps
from ..gguf_file import GGUFFile
from ..scaling import RopeScaling
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
    scaling: RopeScaling = info.scaling()
    # The base does the work of static NTK, so say which base llama.cpp will use.
    return {"method": scaling.method, "summary": f"{scaling.describe()}, base {scaling.base:g}"}


def _record_rows(info, record, path) -> list:
    """pyntk's record of the original values (files edited by pyntk gguf-set)."""
    s = record.scaling
    summary = s.get("summary", "?")
    if "context" in s and "original_context" in s:
        summary += f", context {s['original_context']} -> {s['context']}"
    rows = [("pyntk edit", summary, f"  (originals recorded by pyntk {record.version or '?'})")]
    if s.get("context") != info.context_length or ("base" in s and f32(s["base"]) != f32(info.base)):
        rows.append(("", "the file was changed by another tool after pyntk's edit", ""))
    for name, original in record.originals.items():
        value = f32_text(original.value) if original.type.name == "FLOAT32" else original.value
        rows.append(("  original", f"{name} = {value}", ""))
    for name in record.absent:
        rows.append(("  original", f"{name} absent", ""))
    rows.append(("  undo with", f"pyntk gguf-reset {path}", ""))
    return rows


def run(args) -> int:
    gguf = GGUFFile(args.model, layout_key=LAYOUT_KEY)
    info = read_rope(gguf)
    record = read_record(gguf)
    data = info.to_dict()
    data["effective_scaling"] = _effective(info)
    data["pyntk"] = record.to_dict() if record is not None else None
    temps = stale_temps(os.path.realpath(gguf.path))
    data["stale_temporary_files"] = temps
    if args.json:
        print_json(data)
        return 0
    a = info.arch

    def mark(key: str) -> str:
        return "  (default)" if f"{a}.{key}" in info.defaulted else ""

    rows = [
        ("file", info.path, ""),
        ("architecture", a, ""),
        ("training context", info.context_length, ""),
        ("rotary dims", info.dims, mark("rope.dimension_count")),
        ("rope base", f"{info.base:g}", mark("rope.freq_base")),
        ("scaling type", info.scaling_type, mark("rope.scaling.type")),
        ("scaling factor", f"{info.factor:g}", mark("rope.scaling.factor")),
        ("original context", info.original_context, mark("rope.scaling.original_context_length")),
        ("attn factor", f"{info.attn_factor:g}", mark("rope.scaling.attn_factor")),
        ("finetuned", "yes" if info.finetuned else "no", mark("rope.scaling.finetuned")),
    ]
    if info.head_count:
        rows.insert(3, ("attention heads", f"{info.head_count} (kv {info.head_count_kv})", ""))
    if info.base_swa is not None:
        rows.append(("sliding-window base", f"{info.base_swa:g}", "  (SWA layers keep their own base)"))
    rows.append(("effective scaling", data["effective_scaling"]["summary"], ""))
    if record is not None:
        rows.extend(_record_rows(info, record, args.model))
    for temp in temps:
        rows.append(("stale temp file", temp, "  (left by an interrupted edit; the next edit removes it)"))
    width = max(len(r[0]) for r in rows)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value}{note}")
    return 0
