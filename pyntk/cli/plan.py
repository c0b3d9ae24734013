"""`pyntk plan MODEL --ctx N`: which method and parameters to use for N tokens, why, and (with
--measure) which measure best on your own text."""

from __future__ import annotations

import os
import shlex
import sys

from ..plan import (LAYER_KINDS, PER_REQUEST, RUNTIMES, WHEN, layer_kinds, option, pair_rows,
                    per_request_method, plot_spectrum, recommend, scaling_options, served, setup_for)
from ..record import read_original
from ..scaling import RopeScaling
from ._common import add_command, add_json, check_plot, log, positive_float, positive_int, print_json

DEFAULT_BUDGET = 30.0  # minutes


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="recommend a method and parameters for a target context",
        description="Recommend how to extend a model to --ctx tokens: the method that measured best "
        "at the target in pyntk's measurements (docs/RESULTS.md, pyntk/evidence.json), set up for "
        "the target, provided that no rotary pair leaves the distribution it was trained on (the "
        "critical-dimension criterion of Liu et al. 2023, arXiv:2310.05209; see docs/PLAN.md). "
        "Shows the numbers it rests on, the runner-up and when to prefer it, every method set up "
        "for the target and each pair's wavelength against both contexts; gguf-set --ctx writes "
        "the same recommendation.\n\n"
        "--measure searches instead: it narrows each family's parameters (ntk alpha; yarn factor "
        "and attention temperature) by perplexity at the target on your text, within --budget "
        "minutes, caching every measurement in $XDG_CACHE_HOME/pyntk/measure (~/.cache/pyntk/measure) "
        "so that running the same command again resumes, and ends with the gguf-set command that "
        "writes the winner.\n\n"
        "example: pyntk plan model.gguf --ctx 16384 --plot spectrum.png\n"
        "         pyntk plan model.gguf --ctx 16384 --measure --text book.txt --budget 60",
    )
    p.add_argument("model", help="path of a .gguf file")
    p.add_argument("--ctx", type=positive_int, required=True, metavar="N", help="target context in tokens")
    p.add_argument("--runtime", choices=RUNTIMES, default="file",
                   help="what will run the model: file (llama.cpp from the GGUF file alone, as gguf-set "
                        "writes it; default), freq_base (a runtime that reads only rope.freq_base), "
                        "pyntk (pyntk.dynamic, which adds Dynamic NTK)")
    p.add_argument("--plot", metavar="PNG", help="draw each method's spectrum before and after")
    p.add_argument("--measure", action="store_true",
                   help="search the best parameters by perplexity at the target on --text")
    p.add_argument("--text", metavar="FILE", help="UTF-8 text of at least --ctx tokens, for --measure")
    p.add_argument("--budget", type=positive_float, metavar="MIN",
                   help=f"--measure: start no measurement that would end after MIN minutes "
                        f"(default {DEFAULT_BUDGET:g}; cached ones are free)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for --measure (default: all)")
    add_json(p)


def gguf_set_command(model: str, scaling: RopeScaling, target: int) -> str:
    return shlex.join(["pyntk", "gguf-set", model, *scaling_options(scaling, target)])


def _measure(args, rec, quiet: bool):
    from tqdm import tqdm

    from .. import search

    search.starts(rec)  # nothing to search: say so before loading the model
    model, tokens, cache = search.prepare(args.model, args.text, rec.target, threads=args.threads)

    def progress(scaling):
        return tqdm(total=rec.target, unit="tok", desc=scaling.describe(), file=sys.stderr, leave=False,
                    disable=quiet or not sys.stderr.isatty())

    def report(point):
        if not quiet:
            how = "cached" if point.cached else f"{point.seconds:.1f} s"
            log(f"measured {point.scaling.describe()}: ppl {point.ppl:.4f} ({how})")

    budget = (args.budget if args.budget is not None else DEFAULT_BUDGET) * 60
    if not quiet:
        log(f"measuring at {rec.target} tokens of {args.text}; budget {budget / 60:g} min; cache {cache.path}")
    try:
        outcome = search.measure_text(rec, model, tokens, cache, budget_seconds=budget, report=report,
                                      progress=progress)
    except KeyboardInterrupt:
        log(f"interrupted: {len(cache.entries)} measurement(s) kept in {cache.path}; run the same command "
            f"again to resume")
        raise
    win = outcome.winner
    return {"cache": str(cache.path), **search.summary(outcome, rec),
            "apply": gguf_set_command(args.model, win.scaling, rec.target)}


def run(args) -> int:
    if args.measure and not args.text:
        raise ValueError("--measure needs --text FILE (a text of at least --ctx tokens)")
    if args.text and not args.measure:
        raise ValueError("--text is only read by --measure; add --measure or drop --text")
    if args.budget is not None and not args.measure:
        raise ValueError("--budget limits --measure; add --measure --text FILE or drop --budget")
    if args.plot:
        check_plot(args.plot)
    info = read_original(args.model)
    L0 = info.original_context
    rec = recommend(args.ctx, dims=info.dims, base=info.base, training_context=L0, runtime=args.runtime)
    rows = pair_rows(rec.scaling, L0, rec.target)
    # a setup served per request (pyntk.dynamic.Dynamic) is not written into the file
    in_file = not served(rec.choice.label)
    kinds = layer_kinds(info, rec.scaling, rec.target, in_file=in_file)
    # The rows are for the layers that rotate with the scaling over the whole context: the llama.cpp
    # contract says which (window layers never relate tokens further apart than their window).
    whole = [il for il, kind in kinds.items() if kind == "scaled"]
    layers = "all" if len(whole) == len(kinds) else whole
    for row in rows:
        row["layers"] = layers
    if args.plot:
        plot_spectrum(rec, args.plot, title=f"{os.path.basename(args.model)}: RoPE spectrum for "
                                            f"{rec.target} tokens (training context {L0})")
    scaled = rec.scaling.method != "none"
    apply = gguf_set_command(args.model, rec.scaling, rec.target) if scaled and in_file else None
    measured = None
    if args.measure:
        if not scaled:
            raise ValueError(f"{rec.target} tokens fit the training context ({L0}): there is nothing to "
                             f"measure; give a larger --ctx")
        measured = _measure(args, rec, quiet=args.json)
    if args.json:
        data = {"model": args.model, "arch": info.arch, "dims": info.dims, "base": info.base,
                **rec.to_dict(), "apply": apply, "pairs": rows}
        if measured:
            data["measured"] = measured
        print_json(data)
        return 0
    _print(args, info, rec, rows, apply, kinds)
    if measured:
        _print_measured(measured, rec)
    if args.plot:
        log(f"plot written to {args.plot}")
    return 0


def _name(pick) -> str:
    """A setup as `pyntk plan` names it: the scaling, and the serving for a dynamic-METHOD."""
    if per_request_method(pick.label):
        return f"{pick.label}: {pick.scaling.describe()} at the target, set up per request length"
    return pick.scaling.describe()


def _layers_note(kinds: dict, info) -> str:
    """Which layers the criterion and the pairs are for, and what the others run; "" when all."""
    groups = {kind: [il for il, k in kinds.items() if k == kind] for kind in LAYER_KINDS}
    if len(groups["scaled"]) == len(kinds):
        return ""
    ids = lambda layers: ", ".join(map(str, layers))  # noqa: E731
    parts = [f"{len(info.window_layers)} of {info.layers} layers are sliding-window layers (window "
             f"{info.sliding_window} tokens)"] if info.has_sliding_window else []
    scaled = groups["scaled"]
    parts.append(f"the criterion and the pairs below are for the {len(scaled)} global layer"
                 f"{'s' if len(scaled) > 1 else ''} ({ids(scaled)}) that rotate with this scaling over the "
                 f"whole context" if scaled else
                 "no global layer rotates with this scaling, so the criterion and the pairs below hold for none")
    if groups["window"]:
        parts.append(f"the sliding-window layers ({ids(groups['window'])}) rotate with it only within their window")
    if groups["own"]:
        parts.append(f"the sliding-window layers ({ids(groups['own'])}) keep a rope of their own, which the "
                     f"scaling does not reach")
    if groups["none"]:
        parts.append(f"layers without RoPE: {ids(groups['none'])}")
    return "# " + "; ".join(parts)


def _print(args, info, rec, rows, apply, kinds) -> None:
    L0 = rec.training_context
    print(f"# {os.path.basename(args.model)} ({info.arch}): {info.dims} rotary dims, base {info.base:g}, "
          f"training context {L0}")
    print(f"# target {rec.target} tokens ({rec.target / L0:.3g}x); critical dimension "
          f"{rec.critical_dims} of {info.dims} (pairs 0-{rec.critical_dims // 2 - 1} turn fully "
          f"within {L0} tokens); runtime: {rec.runtime}")
    note = _layers_note(kinds, info)
    if note:
        print(note)
    print(f"recommended: {_name(rec.choice)}")
    print(f"  why: {rec.reason}")
    if apply:
        flags = shlex.join(["pyntk", "args", args.model, *scaling_options(rec.scaling, rec.target)])
        print(f"  apply: {apply}   (runtime flags instead: {flags})")
    elif rec.choice.label != "none":
        print(f"  apply: {WHEN[rec.choice.label]}")
    if rec.runner_up:
        print(f"runner-up: {_name(rec.runner_up)}")
        print(f"  prefer it {WHEN[rec.runner_up.label]}")
    for runtime, pick in rec.elsewhere:
        print(f"on the {runtime} runtime: {_name(pick)}")
        print(f"  prefer it {WHEN[pick.label]}")
    print()
    m = rec.nearest
    measured = {s.label: s for s in m.setups} if m else {}
    print(f"every setup for {rec.target} tokens" +
          (f"; measured: {m.model} on {m.text} set up for {m.target} ({m.source})" if m else "") + ":")
    setups = [(o.scaling.method, o.scaling.describe(), o) for o in rec.options]
    setups += [(label, f"{label} (per request)", option(setup_for(label, rec.target, dims=info.dims,
                                                                base=info.base, training_context=L0),
                                                       L0, rec.target)) for label in PER_REQUEST]
    width = max(len(name) for _, name, _ in setups)
    print(f"  {'setup':<{width}}  {'supports':>9}  {'pairs out':>9}  {'at target':>20}  "
          f"{'inside ' + str(m.training_context if m else L0):>12}")
    for label, name, o in setups:
        s = measured.get(label)
        at = f"{s.ppl:.2f} ({m.excess(s):+.1%})" if s else "-"
        inside = f"{m.cost(s):+.1%}" if s else "-"
        note = "  (pyntk.dynamic.Dynamic)" if served(label) else ""
        print(f"  {name:<{width}}  {o.supported_context:>9}  "
              f"{o.pairs_out_of_distribution:>9}  {at:>20}  {inside:>12}{note}")
    print()
    print("pairs under the recommendation (wavelengths in tokens; turns = context / wavelength):")
    print(f"  {'pair':>4}  {'wavelength':>11}  {'turns/' + str(L0):>12}  {'scaled':>11}  "
          f"{'turns/' + str(rec.target):>12}  {'status':<12}  in distribution")
    for r in rows:
        print(f"  {r['pair']:>4}  {r['wavelength_before']:>11.5g}  {r['turns_in_context']:>12.4g}  "
              f"{r['wavelength_after']:>11.5g}  {r['turns_at_target']:>12.4g}  {r['status']:<12}  "
              f"{'yes' if r['in_distribution'] else 'NO'}")


def _print_measured(measured: dict, rec) -> None:
    print()
    done = "search complete" if measured["complete"] else "stopped by the budget (run again to narrow further)"
    print(f"measured at {rec.target} tokens ({len(measured['points'])} setups, {measured['new_measurements']} "
          f"new; {done}):")
    for p in sorted(measured["points"], key=lambda p: p["ppl"]):
        print(f"  {p['summary']:<48}  ppl {p['ppl']:.4f}{'  (cached)' if p['cached'] else ''}")
    win, against = measured["winner"], measured["recommendation_vs_winner"]
    if against is None:  # e.g. Dynamic NTK, which the search does not narrow
        print(f"winner: {win['summary']} (the recommendation, {rec.scaling.describe()}, was not measured)")
    else:
        print(f"winner: {win['summary']} (the recommendation is {against:+.1%} against it)")
    if measured["pairs_out_of_distribution"]:
        print(f"  note: {measured['pairs_out_of_distribution']} pairs are out of distribution at "
              f"{rec.target} by the criterion; it measured best on this text only")
    print(f"write it: {measured['apply']}")
