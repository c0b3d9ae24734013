"""`pyntk args MODEL --alpha 4`: the runtime settings equivalent to gguf-set; the file is not touched."""

from __future__ import annotations

import json
import os
import shlex
import textwrap

from ..gguf_edit import plan_target, read_original_rope, runtime_settings
from ._common import (
    METHODS_EPILOG,
    add_command,
    add_json,
    add_scaling_options,
    positive_float,
    positive_int,
    print_json,
)


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="print the runtime flags that apply a scaling without editing the file",
        description=textwrap.fill(
            "Print the llama.cpp flags (llama-cli, llama-server), the --override-kv form and the "
            "llama-cpp-python keyword arguments that apply the same scaling as `pyntk gguf-set` with "
            "the same options, computed from the model's original values. The file is not changed.",
            100) + "\n\nexample: pyntk args model.gguf --alpha 4",
    )
    p.epilog = METHODS_EPILOG
    p.add_argument("model", help="path of a .gguf file")
    p.add_argument("--ctx", type=positive_int, metavar="N",
                   help="target context in tokens: derive the parameters from it (default method ntk)")
    p.add_argument("--base", type=positive_float, metavar="B", help="explicit new rope base (static NTK)")
    add_scaling_options(p)
    add_json(p)


def run(args) -> int:
    original = read_original_rope(args.model)
    target = plan_target(original, method=args.method, alpha=args.alpha, factor=args.factor,
                         ctx=args.ctx, base=args.base)
    knobs = {k: getattr(args, k) for k in ("beta_fast", "beta_slow", "attn_factor")}
    if any(v is not None for v in knobs.values()) and target.scaling.method != "yarn":
        raise ValueError("--beta-fast, --beta-slow and --attn-factor apply to --method yarn only")
    settings = runtime_settings(target, original.arch, **knobs)
    if args.json:
        print_json({"file": args.model, "arch": original.arch, "target": target.to_dict(), **settings})
        return 0
    name = os.path.basename(args.model)
    print(f"# {name} ({original.arch}): {target.scaling.describe()}, "
          f"context {original.original_context} -> {target.context}")
    print("# the file is not changed; these apply the same scaling at run time")
    print()
    print("llama-cli / llama-server:")
    print("  " + shlex.join(settings["llama_cpp_flags"]))
    print()
    print("--override-kv form (the values gguf-set would write):")
    print("  " + shlex.join(settings["override_kv"]))
    print()
    print("llama-cpp-python (keyword arguments of llama_cpp.Llama):")
    print("  " + json.dumps(settings["llama_cpp_python"]))
    return 0
