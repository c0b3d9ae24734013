#!/usr/bin/env python3
"""Produce docs/RESULTS.md: perplexity of two real models extended beyond their training context,
none vs linear vs ntk vs dynamic vs yarn, and dynamic-yarn (YaRN set up for each window's length,
as `pyntk serve` runs it), with a table and a plot per target and what the numbers show.

- SmolLM2-135M (llama, 8k training context) on the Debian FAQ, extended to 16k and 32k;
- Gemma 3 270M (gemma3, 32k training context, sliding-window layers) on the King James Bible
  (the FAQ is 43k Gemma tokens, shorter than a 64k window), extended to 64k.

Every measurement is one `pyntk ppl --json` run (one method at one length), its output kept in
docs/results/ (in the repository, so no machine's loss loses a measurement) and reused when the
script runs again, so an interrupted run resumes; docs/results/PREFIXTARGET-LENGTH.json gathers the
rows of one length. RESULTS.md is written from whatever has been measured and says what is missing.
Nothing in RESULTS.md is typed by hand. Long, on 2 cores: a 32k window of SmolLM2 costs about a
quarter of an hour per method, a 64k window of Gemma 3 10-14 minutes (its window layers cache only
their window).

    python tools/make_results.py                        # everything
    python tools/make_results.py --study smollm2 --targets 16384
    python tools/make_results.py --budget-minutes 60    # start nothing new after an hour
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from fetch_model import fetch as fetch_model  # noqa: E402
from fetch_text import fetch as fetch_text  # noqa: E402

from pyntk.dynamic import DynamicPolicy  # noqa: E402
from pyntk.llama import Model  # noqa: E402
from pyntk.perplexity import Result, describe_windows, format_ppl, plan_windows, plot  # noqa: E402
from pyntk.plan import COMPARED, scaling_for  # noqa: E402
from pyntk.scaling import RopeScaling  # noqa: E402

log = logging.getLogger("make_results")
DOCS = ROOT / "docs"
CACHE = DOCS / "results"
DYNAMIC_YARN = "dynamic-yarn"
LABELS = COMPARED + (DYNAMIC_YARN,)
# evidence.json names only what differs from these (and no dims or base: the measurement has them)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(RopeScaling) if f.name not in ("dims", "base")}


@dataclasses.dataclass(frozen=True)
class Study:
    """One model on one text, extended to one or more targets."""

    name: str  # tools/fetch_model.py's name for the model
    title: str
    model_title: str  # as pyntk/evidence.json names it
    text: str  # tools/fetch_text.py's name for the text
    text_title: str
    text_short: str
    targets: Tuple[int, ...]
    prefix: str  # results files: docs/results/PREFIXTARGET-LENGTH.json


STUDIES = {s.name: s for s in (
    Study("smollm2", "SmolLM2-135M", "SmolLM2-135M-Instruct Q4_1", "faq",
          "the Debian FAQ, plain-text edition from the Debian package {version} (written by the FAQ's "
          "authors, not by us; table of contents dropped)", "the Debian FAQ", (16384, 32768), ""),
    Study("gemma3", "Gemma 3 270M", "Gemma 3 270M Q4_K_M", "kjv",
          "the King James Bible (1611, public domain) from the Debian package {version}, decoded by "
          "the package's own `bible` program, verse numbers dropped", "the King James Bible", (65536,), "gemma3-"),
)}


def lengths_for(target: int, training: int) -> List[int]:
    """The training context and doublings up to the target."""
    out, n = [training], training
    while n < target:
        n *= 2
        out.append(min(n, target))
    return out


def _load(path: Path) -> List[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def _result(r: dict) -> Result:
    return Result(r["label"], RopeScaling(**r["scaling"]), r["ctx"], r["ppl"], r["nll"], r["tokens_scored"],
                  r["windows"], r["seconds"], r.get("dynamic"))


def dynamic_yarn(target: int, info) -> DynamicPolicy:
    return DynamicPolicy("yarn", info.base, info.dims, info.original_context, target)


def setup_at(label: str, target: int, n: int, info) -> RopeScaling:
    """What ``label``, set up for ``target``, runs a window of ``n`` tokens with."""
    if label == DYNAMIC_YARN:
        return dynamic_yarn(target, info).scaling_for(n)
    return scaling_for(label, target, dims=info.dims, base=info.base, training_context=info.original_context)


def run_ppl(study: Study, model_path: Path, text_path: Path, target: int, n: int, label: str,
            start: bool) -> Optional[dict]:
    """One `pyntk ppl --json` run, its whole output kept in docs/results/PREFIXTARGET/N-LABEL.json;
    run only if ``start`` (else None) when that file is not there yet."""
    raw = CACHE / f"{study.prefix}{target}" / f"{n}-{label}.json"
    if not raw.exists():
        if not start:
            return None
        cmd = [sys.executable, "-m", "pyntk.cli", "ppl", os.path.relpath(model_path, ROOT), "--text",
               os.path.relpath(text_path, ROOT), "--target", str(target), "--ctx", str(n), "--method", label, "--json"]
        log.info("%s", " ".join(cmd[2:]))
        out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
        _write(raw, json.loads(out))
    (row,) = json.loads(raw.read_text())["results"]
    return row


def measure(study: Study, model: Model, target: int, n: int, run: Callable[[str, bool], Optional[dict]],
            may_start: Callable[[], bool]) -> List[Result]:
    """Every label at length ``n``, set up for ``target``, saved as soon as each is measured.
    ``run(label, start)`` gives one's result (measuring it only if ``start``); ``may_start()`` says
    whether another measurement may begin."""
    path = CACHE / f"{study.prefix}{target}-{n}.json"
    saved = _load(path)  # written back as read (notes included), new entries appended
    results = [_result(r) for r in saved]
    for label in LABELS:
        if any(r.label == label for r in results):
            continue
        scaling = setup_at(label, target, n, model.info)
        # a method that runs exactly like one already measured reuses it: Dynamic NTK within L0;
        # dynamic-yarn within L0 (unscaled) and at the target (yarn set up for it)
        same = [r for r in results if model.runs_as(r.scaling, n) == model.runs_as(scaling, n)]
        if same:
            got = dataclasses.replace(same[0], label=label, scaling=scaling, seconds=0.0, dynamic=(
                dynamic_yarn(target, model.info).describe() if label == DYNAMIC_YARN else None))
            entry = {**got.to_dict(), "note": f"the {same[0].label} row's measurement, reused: the "
                                              f"same llama.cpp settings at this length"}
        else:
            entry = run(label, may_start())
            if entry is None:
                continue
            got = _result(entry)
        results.append(got)
        saved.append(entry)
        _write(path, saved)
    return results


def evidence_entry(study: Study, model: Model, target: int, results: List[Result]) -> Optional[dict]:
    """pyntk/evidence.json's entry for ``target``: every label measured at the target and at the
    training context, None until both are."""
    L0 = model.training_context
    inside = {r.label: r.ppl for r in results if r.ctx == L0}
    setups = []
    for r in results:
        if r.ctx == target and r.label in inside:
            scaling = {k: v for k, v in r.scaling.to_dict().items() if k == "method" or v != DEFAULTS.get(k, v)}
            setups.append({"label": r.label, "scaling": scaling, "ppl": r.ppl, "ppl_training": inside[r.label]})
    if not setups:
        return None
    return {"model": study.model_title, "text": study.text_short, "dims": model.info.dims,
            "base": model.info.base, "training_context": L0, "target": target,
            "source": f"docs/results/{study.prefix}{target}-{target}.json",
            "training_source": f"docs/results/{study.prefix}{target}-{L0}.json", "setups": setups}


def write_evidence(entries: List[dict]) -> None:
    """Put ``entries`` into pyntk/evidence.json (replacing the same model, text and target), one
    setup per line as the file is read by people too."""
    path = ROOT / "pyntk" / "evidence.json"
    key = lambda m: (m["model"], m["text"], m["target"])  # noqa: E731
    new = {key(m): m for m in entries}
    old = json.loads(path.read_text())["measurements"]
    measurements = [new.pop(key(m), m) for m in old] + list(new.values())
    blocks = []
    for m in measurements:
        head = json.dumps({k: v for k, v in m.items() if k != "setups"}, indent=1)[:-2]
        rows = ",\n".join("    " + json.dumps(s) for s in m["setups"])
        blocks.append("  " + head.replace("\n", "\n  ") + ',\n   "setups": [\n' + rows + "\n   ]\n  }")
    path.write_text('{\n "measurements": [\n' + ",\n".join(blocks) + "\n ]\n}\n")


def markdown_table(results: List[Result]) -> str:
    lengths = sorted({r.ctx for r in results})
    order = {label: i for i, label in enumerate(LABELS)}
    labels = sorted(dict.fromkeys(r.label for r in results), key=lambda label: order.get(label, len(order)))
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


def describe_model(study: Study, model: Model) -> str:
    v = model.info
    text = (f"{Path(model.path).name} ({v.arch} architecture, {v.original_context}-token training context, "
            f"{v.dims} rotary dims, base {v.base:g}")
    if v.window_layers:
        text += (f"; {len(v.window_layers)} of {v.layers} layers are sliding-window layers (window "
                 f"{v.sliding_window} tokens, base {v.base_swa:g}) that llama.cpp runs unscaled whatever "
                 f"the method, so every method acts on the other {v.layers - len(v.window_layers)} only; "
                 f"their cache holds only the window, as llama-perplexity and llama-server run them")
    return text + ")"


def section(study: Study, model: Model, text_path: Path, text_tokens: int, runs: Dict[int, List[Result]]) -> List[str]:
    L0 = model.training_context
    version = text_path.with_suffix(".version")
    version = version.read_text().strip() if version.exists() else text_path.name
    lines = [
        f"## {study.title}",
        "",
        f"- model: {describe_model(study, model)}",
        f"- text: {study.text_title.format(version=version)}, {text_tokens} tokens",
        f"- every method is set up once for the target context: linear, dynamic and yarn with factor "
        f"target/{L0}, ntk with the alpha `pyntk plan` recommends (docs/PLAN.md); dynamic-yarn runs a "
        f"window of {L0} tokens unscaled and one of the target length as the yarn row",
        "",
    ]
    for target, results in runs.items():
        span, windows = plan_windows(text_tokens, sorted({r.ctx for r in results}), target)
        png = f"ppl-{study.prefix}{target}.png"
        plot(results, DOCS / png, training_context=L0,
             title=f"{study.title} on {study.text_short}: methods set up for {target} tokens")
        times = [r.seconds for r in results]  # a reused measurement counts 0 s
        timing = f" Measured in {sum(times) / 60:.0f} min." if None not in times else ""
        lines += [
            f"### Extending to {target} tokens",
            "",
            f"Windows: {describe_windows(span, windows, 'half')}.{timing}",
            "",
            markdown_table(results),
            "",
            f"![perplexity against context length, methods set up for {target} tokens]({png})",
            "",
            "What the numbers show:",
            "",
            *[f"- {f}" for f in findings(results, L0, target)],
            "",
        ]
    return lines


def write_results(sections: List[List[str]], missing: List[str], threads: int) -> Path:
    lines = [
        "# Results: models extended beyond their training context",
        "",
        "Produced by `python tools/make_results.py` (every number below is its output, from measurements "
        "kept in `results/`: each one made by `pyntk ppl`'s code, pyntk/perplexity.py; Gemma 3's are whole "
        "`pyntk ppl --json` runs, their output in `results/gemma3-65536/`). Perplexity through llama.cpp "
        f"(llama-cpp-python), {threads} CPU threads. Lower is better; the best value at each length is "
        "in bold.",
        "",
        "How it is measured (`pyntk ppl`, pyntk/perplexity.py): for each target the text's first "
        "`target` tokens are cut into non-overlapping windows of each length; every window is "
        "decoded from an empty KV cache at positions 0..n-1 and the second half of its tokens is "
        "scored (each scored token sees at least half a window of context), as llama.cpp's "
        "llama-perplexity does. Dynamic NTK runs each window with the base its formula gives for "
        "the window's length, so within the training context it is unscaled RoPE.",
        "",
        "dynamic-yarn is YaRN scaled dynamically, as `pyntk serve` and `pyntk.dynamic.Dynamic` run "
        "it: a request of L tokens runs unscaled when L fits the training context L0 and otherwise "
        "with YaRN set up for its length bucket B (L rounded up to a multiple of 256), factor B/L0. "
        "Every window here is such a request, so a window of L0 tokens runs exactly as the none row "
        "and a window of the target length exactly as the yarn row: those cells are the same "
        "measurements, reused, and only the lengths in between are measured for it (the findings "
        "under each table say which).",
        "",
    ]
    for sec in sections:
        lines += sec
    if missing:
        lines += ["## Not measured yet", "", *[f"- {m}" for m in missing],
                  "", "Run `python tools/make_results.py` again to measure them (finished parts are reused).", ""]
    out = DOCS / "RESULTS.md"
    out.write_text("\n".join(lines))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=sorted(STUDIES), action="append",
                        help="measure only this model's part (repeatable; default all); the others are "
                             "reported from earlier runs")
    parser.add_argument("--targets", help="comma-separated target contexts to measure (default: each study's)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop starting new measurements after this long and write what is done")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    only = {int(t) for t in args.targets.split(",")} if args.targets else None
    start = time.monotonic()

    def may_start() -> bool:
        return args.budget_minutes is None or time.monotonic() - start < 60 * args.budget_minutes

    sections: List[List[str]] = []
    missing: List[str] = []
    evidence: List[dict] = []
    threads = 0
    for study in STUDIES.values():
        model_path, text_path = fetch_model(study.name), fetch_text(name=study.text)
        model = Model(model_path)
        threads = model.threads
        tokens = len(model.tokenize(text_path.read_text(encoding="utf-8")))
        runs: Dict[int, List[Result]] = {}
        for target in study.targets:
            chosen = (not args.study or study.name in args.study) and (only is None or target in only)
            allowed = may_start if chosen else (lambda: False)
            results: List[Result] = []
            for n in lengths_for(target, model.training_context):
                got = measure(study, model, target, n,
                              lambda label, start: run_ppl(study, model_path, text_path, target, n, label, start),
                              allowed)
                results += got
                absent = [m for m in LABELS if m not in {r.label for r in got}]
                if absent:
                    missing.append(f"{study.title}, target {target}, length {n}: {', '.join(absent)}")
            if results:
                runs[target] = results
                entry = evidence_entry(study, model, target, results)
                if entry:
                    evidence.append(entry)
        if runs:
            sections.append(section(study, model, text_path, tokens, runs))
    write_evidence(evidence)
    print(write_results(sections, missing, threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
