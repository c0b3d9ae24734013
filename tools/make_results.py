#!/usr/bin/env python3
"""Produce docs/RESULTS.md: perplexity of SmolLM2-135M (8k training context) extended to 16k and
32k on a real English text (the Debian FAQ, tools/fetch_text.py), none vs linear vs ntk vs dynamic
vs yarn, and dynamic-yarn (YaRN set up for each window's length, as `pyntk serve` runs it), with a
table and a plot per target and what the numbers show.

Long: a 32k window costs about a quarter of an hour per method on 2 cores. Every (target, length)
is saved to docs/results/ (kept in the repository, so no machine's loss loses a measurement) as
soon as it is measured and reused when the script runs again, so an interrupted run resumes;
RESULTS.md is written from whatever has been measured, and says what is missing. Nothing in
RESULTS.md is typed by hand.

    python tools/make_results.py                       # targets 16384 and 32768
    python tools/make_results.py --targets 16384       # only the 16k part
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from fetch_model import fetch as fetch_model  # noqa: E402
from fetch_text import fetch as fetch_text  # noqa: E402

from pyntk.llama import DynamicPolicy, Model  # noqa: E402
from pyntk.perplexity import (Candidate, Result, describe_windows, evaluate,  # noqa: E402
                              format_ppl, plan_windows, plot)
from pyntk.plan import COMPARED, scaling_for  # noqa: E402
from pyntk.scaling import RopeScaling  # noqa: E402

log = logging.getLogger("make_results")
DOCS = ROOT / "docs"
CACHE = DOCS / "results"
DYNAMIC_YARN = "dynamic-yarn"
LABELS = COMPARED + (DYNAMIC_YARN,)


def lengths_for(target: int, training: int) -> List[int]:
    """The training context and doublings up to the target."""
    out, n = [training], training
    while n < target:
        n *= 2
        out.append(min(n, target))
    return out


def _load(path: Path) -> List[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def _result(r: dict) -> Result:
    return Result(r["label"], RopeScaling(**r["scaling"]), r["ctx"], r["ppl"], r["nll"], r["tokens_scored"],
                  r["windows"], r["seconds"], r.get("dynamic"))


def candidate(label: str, target: int, info) -> Candidate:
    common = dict(dims=info.dims, base=info.base, training_context=info.original_context)
    if label == DYNAMIC_YARN:
        policy = DynamicPolicy("yarn", info.base, info.dims, info.original_context, target)
        return Candidate(label, policy.scaling, policy)
    return Candidate(label, scaling_for(label, target, **common))


def measure(model: Model, tokens, target: int, n: int, may_start) -> List[Result]:
    """Every method at length ``n``, set up for ``target``; each result is saved as soon as it is
    measured. ``may_start()`` says whether another measurement may begin (the time budget)."""
    from tqdm import tqdm

    path = CACHE / f"{target}-{n}.json"
    saved = _load(path)  # written back as read (notes included), new entries appended
    results = [_result(r) for r in saved]
    for label in LABELS:
        if any(r.label == label for r in results):
            continue
        cand = candidate(label, target, model.info)
        # a method that runs exactly like one already measured reuses it: Dynamic NTK within L0;
        # dynamic-yarn within L0 (unscaled) and at the target (yarn set up for it)
        same = [r for r in results if model.runs_as(r.scaling, n) == model.runs_as(cand.at(n), n)]
        if same:
            got = dataclasses.replace(same[0], label=label, scaling=cand.at(n), seconds=0.0,
                                      dynamic=cand.policy.describe() if cand.policy else None)
            entry = {**got.to_dict(), "note": f"the {same[0].label} row's measurement, reused: the "
                                              f"same llama.cpp settings at this length"}
        elif may_start():
            _, windows = plan_windows(len(tokens), [n], target)
            log.info("target %d, length %d, %s: %d window(s)", target, n, label, windows[n])
            with tqdm(total=n * windows[n], unit="tok", desc=f"{target}/{n}/{label}", file=sys.stderr,
                      disable=not sys.stderr.isatty()) as bar:
                (got,) = evaluate(model, tokens, [n], [cand], span=target, progress=bar.update)
            entry = got.to_dict()
        else:
            continue
        results.append(got)
        saved.append(entry)
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=1))
    return results


def markdown_table(results: List[Result]) -> str:
    lengths = sorted({r.ctx for r in results})
    labels = list(dict.fromkeys(r.label for r in results))
    cell = {(r.label, r.ctx): r.ppl for r in results}
    summary = {r.label: r.parameters() for r in results}
    lines = ["| method | parameters | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|---|" + "---:|" * len(lengths)]
    for label in labels:
        best = [n for n in lengths if cell.get((label, n)) == min(cell[(m, n)] for m in labels if (m, n) in cell)]
        cells = []
        for n in lengths:
            p = cell.get((label, n))
            text = "-" if p is None else format_ppl(p)
            cells.append(f"**{text}**" if n in best else text)
        lines.append(f"| {label} | {summary[label]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(results: List[Result], training: int, target: int) -> List[str]:
    """Plain statements computed from the numbers."""
    ppl: Dict[tuple, float] = {(r.label, r.ctx): r.ppl for r in results}
    lengths = sorted({r.ctx for r in results})
    out = []
    base_ppl = ppl.get(("none", training))
    longest = max(lengths)
    if base_ppl and ("none", longest) in ppl and longest > training:
        out.append(f"Unscaled RoPE goes from {base_ppl:.2f} at the training context ({training}) to "
                   f"{ppl[('none', longest)]:.4g} at {longest} tokens "
                   f"({ppl[('none', longest)] / base_ppl:.3g}x).")
    for n in lengths:
        if n <= training:
            continue
        ranked = sorted((p, label) for (label, m), p in ppl.items() if m == n)
        text = ", ".join(f"{label} {p:.3f}" for p, label in ranked)
        out.append(f"At {n} tokens, best first: {text}.")
    for n in lengths:
        if n > training or ("none", n) not in ppl:
            continue
        costs = [f"{label} {100 * (ppl[(label, n)] / ppl[('none', n)] - 1):+.1f}%"
                 for label in dict.fromkeys(r.label for r in results)
                 if label != "none" and (label, n) in ppl]
        out.append(f"Within the training context ({n} tokens), relative to unscaled: " + ", ".join(costs)
                   + ". Dynamic NTK and dynamic YaRN run these lengths unscaled, so their cost is zero "
                   "by construction.")
    if ("ntk", target) in ppl and ("yarn", target) in ppl:
        diff = 100 * (ppl[("ntk", target)] / ppl[("yarn", target)] - 1)
        out.append(f"At the target ({target}), static NTK with the criterion's alpha is {diff:+.1f}% "
                   f"against YaRN with factor {target / training:g}.")
    return out + dynamic_yarn_findings(results)


def dynamic_yarn_findings(results: List[Result]) -> List[str]:
    """Where each dynamic-yarn cell comes from, and how it compares with the best other row (the
    goal: no worse than 1% anywhere, which no static setup achieves)."""
    dyn = sorted((r for r in results if r.label == DYNAMIC_YARN), key=lambda r: r.ctx)
    if not dyn:
        return []
    sources, versus, worst = [], [], -100.0
    for r in dyn:
        others = [o for o in results if o.ctx == r.ctx and o.label != DYNAMIC_YARN]
        twin = next((o.label for o in others if o.scaling == r.scaling), None)
        sources.append(f"at {r.ctx} it runs {r.scaling.describe()}, "
                       + (f"the {twin} row's setup: the same measurement" if twin
                          else "which no other row runs: measured for it"))
        if others:
            best = min(others, key=lambda o: o.ppl)
            diff = 100 * (r.ppl / best.ppl - 1)
            worst = max(worst, diff)
            versus.append(f"{r.ctx} {diff:+.1f}% ({best.label} {best.ppl:.3f})")
    verdict = "within 1% of the best or better at every length" if worst <= 1.0 else \
        f"up to {worst:+.1f}% worse than the best somewhere"
    return ["Where the dynamic-yarn row comes from (every window is a request of its own length): "
            + "; ".join(sources) + ".",
            "Dynamic YaRN against the best other row at each length: " + ", ".join(versus)
            + f": {verdict}."]


def write_results(model_path: Path, text_path: Path, text_tokens: int, training: int,
                  runs: Dict[int, List[Result]], missing: List[str], threads: int) -> Path:
    version = (text_path.parent / "debian-faq.version").read_text().strip() \
        if (text_path.parent / "debian-faq.version").exists() else text_path.name
    lines = [
        "# Results: SmolLM2-135M extended beyond its 8k training context",
        "",
        "Produced by `python tools/make_results.py` (every number below is its output; the raw "
        "measurements are in `results/`). Perplexity through llama.cpp (llama-cpp-python), "
        f"{threads} CPU threads.",
        "",
        f"- model: {model_path.name} (llama architecture, {training}-token training context, "
        "64 rotary dims, base 100000)",
        f"- text: the Debian FAQ, plain-text edition from the Debian package {version} "
        f"(written by the FAQ's authors, not by us; table of contents dropped), {text_tokens} tokens",
        "- every method is set up once for the target context: linear, dynamic and yarn with "
        "factor target/8192, ntk with the alpha `pyntk plan` recommends (docs/PLAN.md)",
        "- dynamic-yarn is YaRN scaled dynamically, as `pyntk serve` and `pyntk.llama.Dynamic` run "
        "it: a request of L tokens runs unscaled when L fits the 8192-token training context and "
        "otherwise with YaRN set up for its length bucket B (L rounded up to a multiple of 256), "
        "factor B/8192. Every window here is such a request, so a window of 8192 tokens runs "
        "exactly as the none row and a window of the target length exactly as the yarn row "
        "(factor target/8192): those cells are the same measurements, reused, and only the "
        "lengths in between are measured for it (the findings under each table say which)",
        "- lower is better; the best value at each length is in bold",
        "",
        "How it is measured (`pyntk ppl`, pyntk/perplexity.py): for each target the text's first "
        "`target` tokens are cut into non-overlapping windows of each length; every window is "
        "decoded from an empty KV cache at positions 0..n-1 and the second half of its tokens is "
        "scored (each scored token sees at least half a window of context), as llama.cpp's "
        "llama-perplexity does. Dynamic NTK runs each window with the base its formula gives for "
        "the window's length, so within the training context it is unscaled RoPE.",
        "",
    ]
    for target, results in runs.items():
        span, windows = plan_windows(text_tokens, sorted({r.ctx for r in results}), target)
        png = f"ppl-{target}.png"
        plot(results, DOCS / png, training_context=training,
             title=f"SmolLM2-135M on the Debian FAQ: methods set up for {target} tokens")
        # a reused measurement (Dynamic NTK within L0) counts 0 s; recovered ones have no time
        times = [r.seconds for r in results]
        timing = f" Measured in {sum(times) / 60:.0f} min." if None not in times else ""
        lines += [
            f"## Extending to {target} tokens",
            "",
            f"Windows: {describe_windows(span, windows, 'half')}.{timing}",
            "",
            markdown_table(results),
            "",
            f"![perplexity against context length, methods set up for {target} tokens]({png})",
            "",
            "What the numbers show:",
            "",
            *[f"- {f}" for f in findings(results, training, target)],
            "",
        ]
    if missing:
        lines += ["## Not measured yet", "", *[f"- {m}" for m in missing],
                  "", "Run `python tools/make_results.py` again to measure them (finished parts are reused).", ""]
    out = DOCS / "RESULTS.md"
    out.write_text("\n".join(lines))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="16384,32768",
                        help="comma-separated target contexts (default 16384,32768)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--lengths", help="measure only these lengths now (comma-separated); the "
                        "others are reported from earlier runs or listed as missing")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop starting new measurements after this long and write what is done")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    targets = [int(t) for t in args.targets.split(",")]
    model_path, text_path = fetch_model(), fetch_text()
    model = Model(model_path, threads=args.threads)
    training = model.training_context
    tokens = model.tokenize(text_path.read_text(encoding="utf-8"))
    start = time.monotonic()
    only = {int(n) for n in args.lengths.split(",")} if args.lengths else None

    def may_start() -> bool:
        return args.budget_minutes is None or time.monotonic() - start < 60 * args.budget_minutes

    runs: Dict[int, List[Result]] = {}
    missing: List[str] = []
    for target in targets:
        results: List[Result] = []
        for n in lengths_for(target, training):
            allowed = may_start if only is None or n in only else (lambda: False)
            got = measure(model, tokens, target, n, allowed)
            results += got
            absent = [m for m in LABELS if m not in {r.label for r in got}]
            if absent:
                missing.append(f"target {target}, length {n}: {', '.join(absent)}")
        if results:
            runs[target] = results
    out = write_results(model_path, text_path, len(tokens), training, runs, missing, model.threads)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
