"""`pyntk freqs`: per-pair wavelengths before and after a scaling."""

from __future__ import annotations

from ..llamacpp import read as read_view
from ..spectrum import pair_table, status_counts
from ._common import (METHODS_EPILOG, add_command, add_json, add_scaling_options, positive_float,
                      positive_int, print_json, scaling_from_args)


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="show per-pair wavelengths before and after a scaling",
        description="Show, for every rotary pair, its wavelength in tokens before and after the "
        "scaling and whether it is extrapolated (kept), interpolated or blended.\n\n"
        "example: pyntk freqs --method ntk --alpha 4 --dims 128 --base 10000 --ctx 2048",
    )
    p.epilog = METHODS_EPILOG
    p.add_argument("--model", metavar="GGUF", help="take --dims, --base and --ctx from this model")
    p.add_argument("--dims", type=positive_int, help="rotary dimensions (default 128)")
    p.add_argument("--base", type=positive_float, help="rope base (default 10000)")
    p.add_argument("--ctx", type=positive_int, help="training context of the model, in tokens")
    p.add_argument("--seq-len", type=positive_int,
                   help="dynamic: current sequence length (default factor x --ctx)")
    add_scaling_options(p)
    add_json(p)


def run(args) -> int:
    dims, base, ctx = args.dims, args.base, args.ctx
    if args.model:
        info = read_view(args.model)
        dims = dims or info.dims
        base = base or info.base
        ctx = ctx or info.original_context
    scaling = scaling_from_args(args, base=base or 10000.0, dims=dims or 128, original_context=ctx)
    seq_len = args.seq_len
    if scaling.method == "dynamic" and seq_len is None:
        seq_len = int(round(scaling.factor * ctx))
    rows = pair_table(scaling, seq_len=seq_len, context=ctx)
    if args.json:
        print_json({"scaling": scaling.to_dict(), "seq_len": seq_len, "context": ctx,
                    "counts": status_counts(rows), "pairs": rows})
        return 0
    print(f"# {scaling.describe()}, dims {scaling.dims}, base {scaling.base:g}"
          + (f", training context {ctx}" if ctx else "")
          + (f", sequence length {seq_len}" if seq_len else ""))
    header = f"{'pair':>4}  {'wavelength':>12}  {'scaled':>12}  {'ratio':>8}"
    if ctx:
        header += f"  {'turns/ctx':>10}"
    print(header + "  status")
    for r in rows:
        line = (f"{r['pair']:>4}  {r['wavelength_before']:>12.6g}  {r['wavelength_after']:>12.6g}"
                f"  {r['ratio']:>8.4f}")
        if ctx:
            line += f"  {r['turns_in_context']:>10.4g}"
        print(line + f"  {r['status']}")
    counts = status_counts(rows)
    print("# " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0
