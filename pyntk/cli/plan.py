"""`pyntk plan MODEL --ctx N`: which method and parameters to use for N tokens, why, and (with
--measure) which measure best on your own text."""

from __future__ import annotations

import os
import shlex
import signal
import sys

from ..errors import PyntkError
from ..plan import DYNAMIC, RUNTIMES, WHEN, option, pair_rows, plot_spectrum, recommend, setup_for
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


def _number(value: float) -> str:
    short = f"{value:.6g}"
    return short if float(short) == value else repr(value)


def scaling_options(scaling: RopeScaling, target: int) -> list:
    """gguf-set's (and args') options that give ``scaling`` and a context of ``target`` tokens."""
    if scaling.method == "none":
        return ["--method", "none"]
    if scaling.method == "ntk":
        options = ["--alpha", _number(scaling.alpha)]
    else:
        options = ["--method", scaling.method, "--factor", _number(scaling.factor)]
    if scaling.method == "yarn" and scaling.attn_factor != 1.0:
        options += ["--attn-factor", _number(scaling.attn_factor)]
    return options + ["--ctx", str(target)]


def gguf_set_command(model: str, scaling: RopeScaling, target: int) -> str:
    return shlex.join(["pyntk", "gguf-set", model, *scaling_options(scaling, target)])


def _measure(args, rec, quiet: bool):
    from tqdm import tqdm

    from .. import search
    from ..llama import Model
    from ..perplexity import Candidate, evaluate
    from .ppl import read_text

    model = Model(args.model, threads=args.threads)
    tokens = model.tokenize(read_text(args.text))
    if len(tokens) < rec.target:
        raise PyntkError(f"{args.text} has {len(tokens)} tokens but --measure reads {rec.target} (--ctx); "
                         f"give a longer text or a smaller --ctx")
    tokens = tokens[:rec.target]
    path = search.cache_path(model.path, tokens, rec.target)
    cache = search.Cache(path, {"model": model.path, "text": os.path.abspath(args.text), "target": rec.target})
    starts = [rec.scaling] + ([rec.runner_up.scaling] if rec.runner_up else [])
    starts = [s for i, s in enumerate(starts) if s.method in search.AXES and s not in starts[:i]]
    if not starts:
        raise PyntkError(f"nothing to search for {rec.scaling.describe()}; --measure narrows "
                         f"{', '.join(search.AXES)}")

    # Ctrl-C raises KeyboardInterrupt, except inside llama.cpp's log callback (Python called from
    # C while a context is created), which swallows it: keep it, and raise it again after the
    # window, before the measurement can be cached.
    interrupted = []

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    def measure(scaling):
        with tqdm(total=rec.target, unit="tok", desc=scaling.describe(), file=sys.stderr, leave=False,
                  disable=quiet or not sys.stderr.isatty()) as bar:
            def progress(n):
                bar.update(n)
                if interrupted:
                    raise KeyboardInterrupt
            [result] = evaluate(model, tokens, [rec.target], [Candidate(scaling.method, scaling)],
                                progress=progress)
        return result.ppl

    def report(point):
        if not quiet:
            how = "cached" if point.cached else f"{point.seconds:.1f} s"
            log(f"measured {point.scaling.describe()}: ppl {point.ppl:.4f} ({how})")

    budget = (args.budget if args.budget is not None else DEFAULT_BUDGET) * 60
    if not quiet:
        log(f"measuring at {rec.target} tokens of {args.text}; budget {budget / 60:g} min; cache {path}")
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        outcome = search.run(starts, measure, cache, budget_seconds=budget, report=report)
    except KeyboardInterrupt:
        log(f"interrupted: {len(cache.entries)} measurement(s) kept in {path}; run the same command "
            f"again to resume")
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return outcome, path


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
    # Window layers never relate tokens further apart than their window (within L0), so only the
    # global layers' pairs can leave the distribution: the rows are theirs.
    layers = [i for i in range(info.layers) if i not in info.window_layers] if info.has_sliding_window else "all"
    for row in rows:
        row["layers"] = layers
    if args.plot:
        plot_spectrum(rec, args.plot, title=f"{os.path.basename(args.model)}: RoPE spectrum for "
                                            f"{rec.target} tokens (training context {L0})")
    scaled = rec.scaling.method != "none"
    # a setup served per request (pyntk.dynamic.Dynamic) is not written into the file
    served = rec.choice.label in DYNAMIC or rec.choice.label == "dynamic"
    apply = gguf_set_command(args.model, rec.scaling, rec.target) if scaled and not served else None
    outcome = None
    if args.measure:
        if not scaled:
            raise ValueError(f"{rec.target} tokens fit the training context ({L0}): there is nothing to "
                             f"measure; give a larger --ctx")
        outcome, cache = _measure(args, rec, quiet=args.json)
    if args.json:
        data = {"model": args.model, "arch": info.arch, "dims": info.dims, "base": info.base,
                **rec.to_dict(), "apply": apply, "pairs": rows}
        if outcome:
            data["measured"] = _measured(outcome, rec, args.model, cache)
        print_json(data)
        return 0
    _print(args, info, rec, rows, apply)
    if outcome:
        _print_measured(_measured(outcome, rec, args.model, cache), rec)
    if args.plot:
        log(f"plot written to {args.plot}")
    return 0


def _measured(outcome, rec, model: str, cache) -> dict:
    win = outcome.winner
    rule = next(p for p in outcome.points if p.scaling == rec.scaling)
    families = sorted({p.family for p in outcome.points}, key=lambda f: outcome.best_of(f).ppl)
    return {"cache": str(cache), "complete": outcome.complete, "new_measurements": outcome.new,
            "points": [p.to_dict() for p in outcome.points],
            "best_per_family": {f: outcome.best_of(f).to_dict() for f in families},
            "winner": win.to_dict(), "recommendation_vs_winner": rule.ppl / win.ppl - 1,
            "pairs_out_of_distribution": sum(not r["in_distribution"] for r in
                                             pair_rows(win.scaling, rec.training_context, rec.target)),
            "apply": gguf_set_command(model, win.scaling, rec.target)}


def _name(pick) -> str:
    """A setup as `pyntk plan` names it: the scaling, and the serving for a DYNAMIC label."""
    if pick.label in DYNAMIC:
        return f"{pick.label}: {pick.scaling.describe()} at the target, set up per request length"
    return pick.scaling.describe()


def _print(args, info, rec, rows, apply) -> None:
    L0 = rec.training_context
    print(f"# {os.path.basename(args.model)} ({info.arch}): {info.dims} rotary dims, base {info.base:g}, "
          f"training context {L0}")
    print(f"# target {rec.target} tokens ({rec.target / L0:.3g}x); critical dimension "
          f"{rec.critical_dims} of {info.dims} (pairs 0-{rec.critical_dims // 2 - 1} turn fully "
          f"within {L0} tokens); runtime: {rec.runtime}")
    if info.has_sliding_window:
        n, total = len(info.window_layers), info.layers
        print(f"# {n} of {total} layers are sliding-window layers (window {info.sliding_window} tokens): they "
              f"never see pairs further apart than that, so the criterion and the pairs below are for the "
              f"{total - n} global layers ({', '.join(str(i) for i in range(total) if i not in info.window_layers)})")
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
                                                       L0, rec.target)) for label in DYNAMIC]
    width = max(len(name) for _, name, _ in setups)
    print(f"  {'setup':<{width}}  {'supports':>9}  {'pairs out':>9}  {'at target':>20}  "
          f"{'inside ' + str(m.training_context if m else L0):>12}")
    for label, name, o in setups:
        s = measured.get(label)
        at = f"{s.ppl:.2f} ({m.excess(s):+.1%})" if s else "-"
        inside = f"{m.cost(s):+.1%}" if s else "-"
        note = "  (pyntk.dynamic.Dynamic)" if label == "dynamic" or label in DYNAMIC else ""
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
    win = measured["winner"]
    print(f"winner: {win['summary']} (the recommendation is {measured['recommendation_vs_winner']:+.1%} "
          f"against it)")
    if measured["pairs_out_of_distribution"]:
        print(f"  note: {measured['pairs_out_of_distribution']} pairs are out of distribution at "
              f"{rec.target} by the criterion; it measured best on this text only")
    print(f"write it: {measured['apply']}")
