"""`pyntk gguf-set` and `pyntk gguf-reset`: scale a GGUF model's RoPE in the file, reversibly.

gguf-set writes the keys llama.cpp reads (base, scaling type/factor, original context) and raises
ARCH.context_length, so llama-cli, llama-server, llama-cpp-python and Ollama use the longer context
with no runtime flags. The original values stay inside the file; gguf-reset puts them back.
"""

from __future__ import annotations

import os
import shlex
import sys
import textwrap

from ..edit import EditPlan, plan_reset, plan_set
from ..errors import PyntkError
from ..llamacpp import f32_text
from ..record import RECORD_PREFIX
from ..writer import apply, check_writable, human_size, is_applied
from ._common import (
    METHODS_EPILOG,
    SCALING_OPTIONS,
    add_command,
    add_json,
    add_scaling_options,
    log,
    options_named,
    positive_float,
    positive_int,
    print_json,
)

SET_EXAMPLES = """
examples:
  pyntk gguf-set --alpha 4 model.gguf          static NTK, context raised to what alpha 4 supports
  pyntk gguf-set --ctx 32768 model.gguf        what `pyntk plan` recommends for 32768 tokens
  pyntk gguf-set --method yarn --factor 4 model.gguf
  pyntk gguf-set --method ntk-by-parts --factor 4 model.gguf   YaRN's frequencies, no temperature
  pyntk gguf-set --alpha 4 --dry-run model.gguf   show what would change, write nothing
  pyntk gguf-reset model.gguf                  back to the original values

hard links: only the path named is edited; a file with other hard links is rewritten, so this path
gets a file of its own (disk space for a copy) and the other links keep the old content.
"""


def add_parser(sub, name: str) -> None:
    if name == "gguf-reset":
        p = add_command(
            sub, name, run_reset, help="undo gguf-set: restore a model's original RoPE and context values",
            description=textwrap.fill(
                "Restore every RoPE and context value pyntk gguf-set changed, exactly as it was (type "
                "and bytes), and remove pyntk's keys. llama.cpp then loads the model as before. As "
                "with gguf-set, only the path named is changed: a file with other hard links is "
                "rewritten and the other links keep their content.", 100),
        )
        p.add_argument("model", help="path of a .gguf file edited by pyntk gguf-set")
        _add_write_options(p)
        return
    p = add_command(
        sub, name, run_set,
        help="extend a GGUF model's context in the file (NTK/linear/YaRN), reversibly",
        description=textwrap.fill(
            "Write RoPE scaling into a GGUF model so llama.cpp (llama-cli, llama-server, "
            "llama-cpp-python, Ollama) runs it with a longer context and no runtime flags. Parameters "
            "are always computed from the model's original values, so repeated edits never compound; "
            "the originals stay in the file for `pyntk gguf-reset`. In place (milliseconds) when every "
            "value keeps its size, else an atomic rewrite (the first edit of a file).", 100),
    )
    p.epilog = SET_EXAMPLES + "\n" + METHODS_EPILOG + "\n(gguf-set writes none, ntk, linear, yarn and ntk-by-parts: " \
        "the methods llama.cpp can apply from the file)"
    p.add_argument("model", help="path of a .gguf file")
    p.add_argument("--ctx", type=positive_int, metavar="N",
                   help="target context in tokens: alone, the method and parameters `pyntk plan` "
                        "recommends for it; with --method, that method set up for it. Written as the "
                        "new context length")
    p.add_argument("--base", type=positive_float, metavar="B",
                   help="explicit new rope base (static NTK)")
    add_scaling_options(p)
    p.add_argument("--force", action="store_true",
                   help="also scale a model marked rope.scaling.finetuned, or beyond 64x its training "
                        "context, and overwrite an existing -o file")
    _add_write_options(p)


def _add_write_options(p) -> None:
    p.add_argument("-o", "--output", metavar="OUT.gguf",
                   help="write the edited model to this new file and leave the original untouched")
    p.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_json(p)


def run_set(args) -> int:
    for option in ("beta_fast", "beta_slow"):
        if getattr(args, option) is not None:
            flag = "--" + option.replace("_", "-")
            raise PyntkError(f"{flag} cannot be stored in the file for llama.cpp; pass it at run time "
                             f"(`{shlex.join(['pyntk', 'args', args.model, *_scaling_options(args)])}` "
                             f"prints the flags)")
    with options_named():
        plan = plan_set(args.model, method=args.method, alpha=args.alpha, factor=args.factor, ctx=args.ctx,
                        base=args.base, attn_factor=args.attn_factor, force=args.force, output=args.output)
    return _execute(plan, args)


def _scaling_options(args) -> list:
    """The scaling options as typed, to repeat them in a command."""
    out = []
    for option in ("method", "ctx", "base", *SCALING_OPTIONS):
        value = getattr(args, option)
        if value is not None:
            text = f"{value:g}" if isinstance(value, float) else str(value)
            out += ["--" + option.replace("_", "-"), text if isinstance(value, str) or float(text) == value
                    else repr(value)]
    return out


def run_reset(args) -> int:
    plan = plan_reset(args.model, output=args.output)
    args.force = getattr(args, "force", False)
    return _execute(plan, args)


def _value(change_value, vtype) -> str:
    if vtype is None:
        return "(absent)"
    if vtype.name == "FLOAT32":
        return f32_text(change_value)
    if isinstance(change_value, str):
        return change_value.strip() if len(change_value) <= 40 else change_value.strip()[:37] + "..."
    return str(change_value)


def _print_plan(plan: EditPlan, dry_run: bool) -> None:
    name = os.path.basename(plan.source)
    if plan.action == "set":
        t = plan.target
        head = f"{name} ({plan.arch}): {t.scaling.describe()}"
        if t.scaling.method == "ntk":
            head += f", written as freq_base {f32_text(t.rope.freq_base)}"
        print(head)
        why = ""
        if plan.request.get("ctx") is None and t.scaling.method != "none":
            why = f" ({t.scaling.method} keeps {t.supported_context} in distribution by pyntk plan's criterion"
            why += ", rounded down to llama.cpp's 256-token padding)" if t.context != t.supported_context else ")"
        print(f"  context {plan.original.original_context} -> {t.context} tokens{why}")
    else:
        print(f"{name} ({plan.arch}): restore the original values")
    shown = [c for c in plan.changes if not c.key.startswith(RECORD_PREFIX)]
    record = [c for c in plan.changes if c.key.startswith(RECORD_PREFIX)]
    width = max([len(c.key) for c in shown] + [0])
    for c in shown:
        old = _value(c.old_value, c.old.type if c.old else None)
        new = _value(c.new.value if c.new else None, c.new.type if c.new else None)
        print(f"  {c.key:<{width}}  {old} -> {new}")
    if record:
        added = sum(1 for c in record if c.old is None)
        removed = sum(1 for c in record if c.new is None)
        if plan.action == "reset":
            print(f"  - pyntk's record removed ({removed} pyntk.* keys)")
        elif added:
            print(f"  + pyntk's record of the original values ({added} pyntk.* keys, for gguf-reset)")
        else:
            print("  pyntk.scaling updated")
    if plan.output != plan.source:
        print(f"  written to {plan.output}; the original stays untouched")
    for note in plan.notes:
        log(f"note: {note}")
    if plan.nothing_to_do:
        return
    if plan.in_place:
        how = "in place: every changed value keeps its size (milliseconds, whatever the file size)"
    else:
        data = plan.data_bytes
        how = (f"rewrite ({plan.reason}): metadata re-encoded, {human_size(data)} of tensor data "
               f"copied unchanged to a temporary file, then renamed over the original")
        if plan.output != plan.source:
            how = f"new file: metadata re-encoded, {human_size(data)} of tensor data copied unchanged"
        if plan.action == "set" and plan.output == plan.source:
            how += "; later edits of this file are in place"
    print(("would be " if dry_run else "") + how)


def _confirm(plan: EditPlan) -> bool:
    what = "write the edited copy" if plan.output != plan.source else f"edit {plan.source}"
    sys.stderr.write(f"{what}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _note_removed(paths) -> None:
    for stale in paths:
        log(f"note: removed {stale}, a temporary file left by an interrupted edit")


def _execute(plan: EditPlan, args) -> int:
    try:
        return _carry_out(plan, args)
    except KeyboardInterrupt:
        # Read back rather than track: the rename (or the in-place write) may have happened an
        # instant before the Ctrl-C, or the edit may have finished and only its report was left.
        if plan.nothing_to_do or args.dry_run or not is_applied(plan):
            raise KeyboardInterrupt("interrupted: nothing changed, the original is intact") from None
        where = shlex.quote(plan.output)
        undo = f"; undo with: pyntk gguf-reset {where}" if plan.action == "set" else ""
        raise KeyboardInterrupt(f"interrupted after the edit completed: {where} has the new values{undo}") from None


def _carry_out(plan: EditPlan, args) -> int:
    if plan.output != plan.source and os.path.exists(plan.output) and not args.force:
        raise PyntkError(f"{plan.output}: already exists; choose another -o name or pass --force to overwrite it")
    if not args.dry_run and not plan.nothing_to_do:
        check_writable(plan)  # refuse before showing a plan that cannot be carried out
    data = plan.to_dict()
    data["dry_run"] = bool(args.dry_run)
    if not args.json:
        _print_plan(plan, args.dry_run)
    if plan.nothing_to_do:
        if not args.dry_run:
            _note_removed(apply(plan).removed_temps)
        if args.json:
            data.update(applied=False, result=None)
            print_json(data)
        else:
            print(f"nothing to do: {plan.reason}; nothing written")
        return 0
    if args.dry_run:
        try:
            check_writable(plan)
        except PyntkError as e:
            (data.setdefault("notes", [])).append(f"the edit would be refused: {e}")
            if not args.json:
                log(f"note: the edit would be refused: {e}")
        if args.json:
            data.update(applied=False, result=None)
            print_json(data)
        else:
            print("dry run: nothing written")
        return 0
    if sys.stdin is not None and sys.stdin.isatty() and not args.yes:
        if not _confirm(plan):
            log("cancelled: nothing written")
            return 1
    bar = None
    if not plan.in_place:
        from tqdm import tqdm
        total = plan.data_bytes
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="copying tensor data",
                   file=sys.stderr, disable=args.json or not sys.stderr.isatty(), leave=False)
    try:
        result = apply(plan, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    _note_removed(result.removed_temps)
    for lost in result.not_kept:
        log(f"note: the rewritten file could not keep the original's {lost}")
    if args.json:
        data.update(applied=True, result=result.to_dict())
        print_json(data)
        return 0
    where = shlex.quote(plan.output)
    if plan.action == "set":
        print(f"done ({result.mode}, {result.seconds * 1000:.0f} ms): llama.cpp now runs {where} with "
              f"context {plan.target.context} and no flags; undo with: pyntk gguf-reset {where}")
    else:
        print(f"done ({result.mode}, {result.seconds * 1000:.0f} ms): {where} has its original values again")
    return 0
