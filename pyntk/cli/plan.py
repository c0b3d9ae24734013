"""`pyntk plan MODEL --ctx N`: which method and parameters reach N tokens, and why."""

from __future__ import annotations

import os
import shlex
import sys

from ..gguf_edit import read_original_rope
from ..plan import measure_candidates, pair_rows, plot_spectrum, recommend
from ._common import add_command, add_json, check_plot, log, positive_int, print_json

# how far (relative perplexity) the recommendation may sit from the best candidate and still count
CONFIRM_MARGIN = 0.02


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="recommend a method and parameters for a target context",
        description="Recommend how to extend a model to --ctx tokens, from the critical-dimension "
        "analysis of RoPE extrapolation (Liu et al. 2023, arXiv:2310.05209; see docs/PLAN.md): "
        "a rotary pair that turned fully within the training context saw every angle; any other "
        "pair must turn no further over the target than it did in training. The smallest static "
        "NTK alpha that achieves this is recommended (gguf-set --ctx uses the same). Shows every "
        "method set up for the target and each pair's wavelength against both contexts.\n\n"
        "example: pyntk plan model.gguf --ctx 16384 --plot spectrum.png\n"
        "         pyntk plan model.gguf --ctx 16384 --measure --text book.txt",
    )
    p.add_argument("model", help="path of a .gguf file")
    p.add_argument("--ctx", type=positive_int, required=True, metavar="N", help="target context in tokens")
    p.add_argument("--plot", metavar="PNG", help="draw each method's spectrum before and after")
    p.add_argument("--measure", action="store_true",
                   help="confirm by perplexity at the target over a few candidates (needs --text)")
    p.add_argument("--text", metavar="FILE", help="UTF-8 text of at least --ctx tokens, for --measure")
    p.add_argument("--threads", type=positive_int, help="CPU threads for --measure (default: all)")
    add_json(p)


def _measure(args, rec) -> dict:
    from tqdm import tqdm

    from ..llama import Model
    from ..perplexity import Candidate, evaluate, plan_windows
    from .ppl import read_text

    model = Model(args.model, threads=args.threads)
    tokens = model.tokenize(read_text(args.text))
    _, windows = plan_windows(len(tokens), [rec.target])
    candidates = [Candidate(label, s) for label, s in measure_candidates(rec)]
    bar = tqdm(total=rec.target * windows[rec.target] * len(candidates), unit="tok", desc="measuring",
               file=sys.stderr, leave=False, disable=args.json or not sys.stderr.isatty())
    try:
        results = evaluate(model, tokens, [rec.target], candidates, progress=bar.update)
    finally:
        bar.close()
    best = min(results, key=lambda r: r.ppl)
    chosen = results[0]
    confirmed = chosen.ppl <= best.ppl * (1 + CONFIRM_MARGIN)
    return {"text": args.text, "results": [r.to_dict() for r in results], "best": best.label,
            "confirmed": confirmed, "margin": CONFIRM_MARGIN,
            "recommended_vs_best": chosen.ppl / best.ppl - 1}


def run(args) -> int:
    if args.measure and not args.text:
        raise ValueError("--measure needs --text FILE (a text of at least --ctx tokens)")
    if args.text and not args.measure:
        raise ValueError("--text is only read by --measure; add --measure or drop --text")
    if args.plot:
        check_plot(args.plot)
    info = read_original_rope(args.model)
    L0 = info.original_context
    rec = recommend(args.ctx, dims=info.dims, base=info.base, training_context=L0)
    rows = pair_rows(rec.scaling, L0, rec.target)
    if args.plot:
        plot_spectrum(rec, args.plot, title=f"{os.path.basename(args.model)}: RoPE spectrum for "
                                            f"{rec.target} tokens (training context {L0})")
    measured = _measure(args, rec) if args.measure else None
    apply = f"pyntk gguf-set {shlex.quote(args.model)} --ctx {rec.target}"
    if args.json:
        data = {"model": args.model, "arch": info.arch, "dims": info.dims, "base": info.base,
                **rec.to_dict(), "apply": apply if rec.scaling.method != "none" else None,
                "pairs": rows}
        if measured:
            data["measured"] = measured
        print_json(data)
        return 0

    name = os.path.basename(args.model)
    print(f"# {name} ({info.arch}): {info.dims} rotary dims, base {info.base:g}, training context {L0}")
    print(f"# target {rec.target} tokens ({rec.target / L0:.3g}x); critical dimension "
          f"{rec.critical_dims} of {info.dims} (pairs 0-{rec.critical_dims // 2 - 1} turn fully "
          f"within {L0} tokens)")
    print(f"recommended: {rec.scaling.describe()}")
    print(f"  why: {rec.reason}")
    if rec.scaling.method != "none":
        print(f"  apply: {apply}   (runtime flags instead: pyntk args {shlex.quote(args.model)} "
              f"--ctx {rec.target})")
    print()
    print(f"every method set up for {rec.target} tokens:")
    width = max(len(o.scaling.describe()) for o in rec.options)
    print(f"  {'method':<{width}}  {'supports':>9}  {'pairs out':>9}  short inputs")
    for o in rec.options:
        short = "unchanged" if o.short_inputs_unchanged else "changed"
        note = "  (llama-cpp-python: pyntk.llama.DynamicNTK)" if o.scaling.method == "dynamic" else ""
        print(f"  {o.scaling.describe():<{width}}  {o.supported_context:>9}  "
              f"{o.pairs_out_of_distribution:>9}  {short}{note}")
    print()
    print("pairs under the recommendation (wavelengths in tokens; turns = context / wavelength):")
    print(f"  {'pair':>4}  {'wavelength':>11}  {'turns/' + str(L0):>12}  {'scaled':>11}  "
          f"{'turns/' + str(rec.target):>12}  {'status':<12}  in distribution")
    for r in rows:
        print(f"  {r['pair']:>4}  {r['wavelength_before']:>11.5g}  {r['turns_in_context']:>12.4g}  "
              f"{r['wavelength_after']:>11.5g}  {r['turns_at_target']:>12.4g}  {r['status']:<12}  "
              f"{'yes' if r['in_distribution'] else 'NO'}")
    if measured:
        print()
        print(f"measured at {rec.target} tokens on {os.path.basename(args.text)} "
              f"(second half of each window scored):")
        for r in measured["results"]:
            print(f"  {r['label']:<20}  {r['summary']:<44}  ppl {r['ppl']:.3f}")
        if measured["confirmed"]:
            print(f"confirmed: the recommendation is within {CONFIRM_MARGIN:.0%} of the best "
                  f"candidate ({measured['best']})")
        else:
            print(f"not confirmed on this text: {measured['best']} is better by "
                  f"{measured['recommended_vs_best']:.1%}; consider it")
    if args.plot:
        log(f"plot written to {args.plot}")
    return 0
