"""`pyntk args MODEL --alpha 4`: the runtime settings equivalent to gguf-set; the file is not touched."""

from __future__ import annotations

import json
import os
import shlex
import textwrap

from .. import llamacpp
from ..edit import layer_notes
from ..errors import PyntkError
from ..record import read_original
from ..target import beyond_measured, plan_target
from ._common import (
    METHODS_EPILOG,
    add_command,
    add_json,
    add_scaling_options,
    options_named,
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
                   help="target context in tokens: alone, what `pyntk plan` recommends for it; with "
                        "--method, that method set up for it")
    p.add_argument("--base", type=positive_float, metavar="B", help="explicit new rope base (static NTK)")
    add_scaling_options(p)
    p.add_argument("--force", action="store_true", help="print the settings even beyond 64x the training context")
    add_json(p)


def run(args) -> int:
    original = read_original(args.model)
    with options_named():
        target = plan_target(original, method=args.method, alpha=args.alpha, factor=args.factor,
                             ctx=args.ctx, base=args.base, attn_factor=args.attn_factor, force=args.force)
        # the betas have no file key, so gguf-set's target leaves them out; at run time they apply
        betas = {k: getattr(args, k) for k in ("beta_fast", "beta_slow") if getattr(args, k) is not None}
        scaling = target.scaling.replace(**betas)
        rope = llamacpp.with_context(llamacpp.to_llama(scaling), original) if betas else target.rope
    arch, ctx = original.arch, target.context
    try:
        override = llamacpp.override_kv(rope, arch, ctx)
    except PyntkError:  # betas other than llama.cpp's defaults have no file key
        override = None
    settings = {"llama_cpp_flags": llamacpp.cli_flags(rope, arch, ctx), "override_kv": override,
                "llama_cpp_python": llamacpp.python_kwargs(rope, arch, ctx),
                "ggml_rope_ext": llamacpp.ggml_args(rope, original.dims)}
    beyond = beyond_measured(target)
    notes = ([f"--force: {beyond}"] if beyond else []) + layer_notes(original, target, in_file=False)
    if args.json:
        print_json({"file": args.model, "arch": arch, "target": {**target.to_dict(), "llama_cpp": rope.to_dict()},
                    "notes": notes, **settings})
        return 0
    name = os.path.basename(args.model)
    print(f"# {name} ({arch}): {scaling.describe()}, context {original.original_context} -> {ctx}")
    print("# the file is not changed; these apply the same scaling at run time")
    for note in notes:
        print(f"# note: {note}")
    print()
    print("llama-cli / llama-server:")
    print("  " + shlex.join(settings["llama_cpp_flags"]))
    print()
    print("--override-kv form (the values gguf-set would write):")
    print("  " + (shlex.join(override) if override else "(none: llama.cpp has no file key for these betas)"))
    print()
    print("llama-cpp-python (keyword arguments of llama_cpp.Llama):")
    print("  " + json.dumps(settings["llama_cpp_python"]))
    return 0
