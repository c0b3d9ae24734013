"""`pyntk info MODEL.gguf`: the RoPE and context settings llama.cpp will use."""

from __future__ import annotations

from ..gguf_edit import read_rope
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
    return {"method": scaling.method, "summary": scaling.describe()}


def run(args) -> int:
    info = read_rope(args.model)
    data = info.to_dict()
    data["effective_scaling"] = _effective(info)
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
    width = max(len(r[0]) for r in rows)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value}{note}")
    return 0
