"""`pyntk ppl MODEL --text FILE`: perplexity for every (context length, method) through llama.cpp."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List

from ..errors import PyntkError
from ..dynamic import DynamicPolicy, check_runnable
from ..llama import Model
from ..perplexity import (SCORES, Candidate, describe_windows, evaluate, format_table,
                          plan_windows, plot, read_text)
from ..plan import COMPARED, per_request_method, scaling_for
from ..scaling import USES
from ._common import METHODS_EPILOG, add_command, add_json, check_plot, log, positive_int, print_json

# method parameters a --method item may set, e.g. ntk:alpha=4 or yarn:factor=4:beta-fast=16; one a
# method does not use is refused by RopeScaling, naming the methods that do. original_context is
# the model's.
_PARAMS = tuple(dict.fromkeys(p for uses in USES.values() for p in uses if p != "original_context"))


def int_list(text: str) -> List[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 4:
        raise argparse.ArgumentTypeError(f"context lengths must be at least 4 tokens, got {text!r}")
    return sorted(set(values))


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="measure perplexity for context lengths x scaling methods",
        description="Measure perplexity on your own model and text through llama.cpp "
        "(llama-cpp-python), for every context length and method. Every method is set up once for "
        "the --target context (default: the longest --ctx): linear, dynamic and yarn with factor "
        "target/training context, ntk with the alpha `pyntk plan` recommends. So the rows show "
        "what one configuration costs at short lengths and gains at long ones.\n\n"
        "The text's first --target tokens are cut into non-overlapping windows of each length; "
        "each window starts at position 0 and its second half is scored (--score all: every token "
        "but the first), as llama.cpp's llama-perplexity does. Logits are reduced batch by batch: "
        "memory stays at the model, its KV cache and about 1 GB.\n\n"
        "example: pyntk ppl model.gguf --text book.txt --ctx 4096,8192,16384 "
        "--method none,linear,ntk,dynamic,yarn --plot ppl.png",
    )
    p.epilog = (METHODS_EPILOG + "\n\nA --method item may set parameters: ntk:alpha=4, "
                "yarn:factor=4:beta-fast=16, dynamic:factor=2 (several items may share a method).\n"
                "dynamic-METHOD (e.g. dynamic-yarn) scales METHOD dynamically, as `pyntk serve` does: "
                "each window runs unscaled within the training context and, beyond it, with METHOD "
                "set up for its own length (yarn: factor length/training context).")
    p.add_argument("model", help="path of a .gguf file")
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file to score")
    p.add_argument("--ctx", type=int_list, metavar="N,N,...",
                   help="context lengths to evaluate (default: the training context and twice it)")
    p.add_argument("--method", default=",".join(COMPARED), metavar="M,M,...",
                   help=f"methods to compare (default {','.join(COMPARED)})")
    p.add_argument("--target", type=positive_int, metavar="N",
                   help="context every method is set up for (default: the longest --ctx); the "
                        "text must have at least this many tokens")
    p.add_argument("--score", choices=SCORES, default="half",
                   help="which tokens of each window are scored (default half: the second half)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all available)")
    p.add_argument("--flash-attn", action="store_true",
                   help="use llama.cpp's flash attention (less memory; rounding differs slightly)")
    p.add_argument("--plot", metavar="PNG", help="also draw perplexity against context length")
    add_json(p)


def parse_methods(text: str, target: int, model: Model, longest: int = 0) -> List[Candidate]:
    """--method's items, set up for ``target``; dynamic ones allow windows of ``longest`` tokens."""
    info = model.info
    candidates = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        method, *assignments = item.split(":")
        per_request = per_request_method(method)  # dynamic-yarn: yarn set up for each window's length
        if per_request is not None:
            if assignments:
                raise ValueError(f"--method {item!r}: {method} takes no parameters (each length "
                                 f"gets its own)")
            try:
                policy = DynamicPolicy(per_request, info.base, info.dims,
                                       info.original_context, max(target, longest))
                check_runnable(model, policy)
            except (ValueError, PyntkError) as e:
                raise ValueError(f"--method {item!r}: {e}") from None
            candidates.append(Candidate(item, policy.scaling, policy))
            continue
        params = {}
        for a in assignments:
            key, sep, value = a.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in _PARAMS:
                raise ValueError(f"--method {item!r}: expected PARAM=VALUE with PARAM one of "
                                 f"{', '.join(k.replace('_', '-') for k in _PARAMS)}")
            try:
                params[key] = float(value)
            except ValueError:
                raise ValueError(f"--method {item!r}: {value!r} is not a number") from None
        try:
            scaling = scaling_for(method, target, dims=info.dims, base=info.base,
                                  training_context=info.original_context, **params)
            model.runs_as(scaling, target)  # one llama.cpp can run?
        except (ValueError, PyntkError) as e:
            raise ValueError(f"--method {item!r}: {e}") from None
        candidates.append(Candidate(item, scaling))
    if not candidates:
        raise ValueError("--method is empty; name at least one method, e.g. --method none,ntk")
    return candidates


def run(args) -> int:
    if args.plot:
        check_plot(args.plot)
    text = read_text(args.text)
    model = Model(args.model, threads=args.threads)
    L0 = model.training_context
    lengths = args.ctx or [L0, 2 * L0]
    target = args.target or max(lengths)
    candidates = parse_methods(args.method, target, model, max(lengths))
    tokens = model.tokenize(text)
    span, windows = plan_windows(len(tokens), lengths, max(target, max(lengths)))

    from tqdm import tqdm
    total = sum(n * windows[n] for n in lengths) * len(candidates)
    bar = tqdm(total=total, unit="tok", desc="perplexity", file=sys.stderr, leave=False,
               disable=args.json or not sys.stderr.isatty())
    t0 = time.perf_counter()
    try:
        results = evaluate(model, tokens, lengths, candidates, score=args.score, span=span,
                           flash_attn=args.flash_attn, progress=bar.update)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    name = os.path.basename(args.model)
    if args.plot:
        plot(results, args.plot, training_context=L0,
             title=f"{name} on {os.path.basename(args.text)}: methods set up for {target} tokens")
    if args.json:
        print_json({"model": args.model, "text": args.text, "text_tokens": len(tokens),
                    "training_context": L0, "target": target, "score": args.score, "span": span,
                    "windows": {str(n): k for n, k in windows.items()}, "seconds": seconds,
                    "results": [r.to_dict() for r in results]})
        return 0
    print(f"# perplexity of {name} on {os.path.basename(args.text)} ({len(tokens)} tokens); "
          f"training context {L0}; every method set up for {target} tokens")
    print(f"# {describe_windows(span, windows, args.score)}")
    print(format_table(results))
    print(f"# {len(results)} measurements in {seconds:.1f} s")
    if args.plot:
        log(f"plot written to {args.plot}")
    return 0
