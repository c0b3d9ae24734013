"""`pyntk verify MODEL.gguf`: check that llama.cpp computes what the rope settings say."""

from __future__ import annotations

import os
import time

from ..record import read_original
from ._common import (
    METHODS_EPILOG,
    add_command,
    add_json,
    add_scaling_options,
    log,
    positive_int,
    print_json,
    scaling_from_args,
)


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="check that llama.cpp applies the rope settings, against a numpy reference",
        description="Run the model in llama.cpp (llama-cpp-python) and in pyntk's independent numpy "
        "implementation with the same RoPE scaling, with query tokens thousands of positions away from "
        "the keys they attend to, and compare the logits. It passes when llama.cpp is as close to the "
        "reference as its own rounding (8-bit matrix-product inputs, float32 angles) explains, and "
        "closer to the scaling than to the same with its base 1% lower or higher. Without scaling "
        "options the file's own settings are checked; with them, that scaling is applied at run time "
        "(computed from the model's original values). Architectures: llama (Llama 1-3.x, Mistral 7B), "
        "qwen2, qwen3, gemma2, gemma3 (sliding-window layers as llama.cpp runs them), phi3 (LongRoPE). Exit "
        "status 1 when the check fails. Thresholds: docs/VERIFY.md.\n\n"
        "example: pyntk verify model.gguf --method yarn --factor 4",
    )
    p.epilog = METHODS_EPILOG
    p.add_argument("model", help="path of a .gguf file (llama, qwen2, qwen3, gemma2, gemma3 or phi3 architecture)")
    p.add_argument("--tokens", type=positive_int, default=32, metavar="N",
                   help="query tokens whose logits are compared, 1..255 (default 32)")
    p.add_argument("--position", type=positive_int, metavar="P",
                   help="farthest query position; the queries spread over P/4..P "
                        "(default twice the context the scaling targets)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    p.add_argument("--ctx", type=positive_int, metavar="N",
                   help="llama.cpp's context size for the check (default: just the tokens compared); it "
                        "decides which LongRoPE factors llama.cpp applies (Phi-3: the long ones above the "
                        "file's original context)")
    p.add_argument("--kernel", action="store_true",
                   help="instead: compare pyntk's rotation kernel with llama.cpp's (libggml) for this "
                        "scaling, on random heads shaped like the model's")
    add_scaling_options(p)
    add_json(p)


def _override(args):
    if all(getattr(args, o) is None for o in ("method", "alpha", "factor", "beta_fast", "beta_slow",
                                              "attn_factor")):
        return None
    original = read_original(args.model)
    return scaling_from_args(args, base=original.base, dims=original.dims,
                             original_context=original.original_context)


def run(args) -> int:
    from .. import verify

    scaling = _override(args)
    if args.kernel:
        kernel = verify.verify_kernel(args.model, scaling, tokens=args.tokens, position=args.position,
                                      seed=args.seed)
        if args.json:
            print_json(kernel.to_dict())
        else:
            _print_kernel(kernel)
        return 0 if kernel.passed else 1
    # refuse bad options, a bad file or a scaling llama.cpp cannot run before saying anything
    verify.preflight(args.model, scaling, args.tokens, args.position)
    if not args.json:
        log("running the model in llama.cpp and in the numpy reference ...")
    start = time.perf_counter()
    report = verify.verify(args.model, scaling, tokens=args.tokens, position=args.position, seed=args.seed,
                           context=args.ctx)
    if args.json:
        print_json(report.to_dict())
    else:
        _print_report(report, time.perf_counter() - start)
    return 0 if report.passed else 1


def _print_report(r, seconds: float) -> None:
    m, n, t = r.measured, r.noise, r.thresholds
    source = "the file's own rope settings" if r.file_settings else "set at run time"
    print(f"model            {os.path.basename(r.path)}")
    print(f"llama.cpp ran    {r.scaling} ({source})")
    print(f"reference        {r.reference} ({r.mode} mode): {r.layers}")
    print(f"tokens           {r.tokens} queries at positions {r.positions[0]}..{r.positions[1]}, "
          f"each attending to {r.context_tokens} tokens at 0..{r.context_tokens - 1}")
    print(f"matmul inputs    rounded to {r.rounding} by llama.cpp")
    print(f"{'':17}{'llama.cpp':>12}{'noise':>12}{'threshold':>12}")
    print(f"{'mean |dlogit|':17}{m.mean_abs:>12.4g}{n.mean_abs:>12.4g}{t['mean_abs']:>12.4g}")
    print(f"{'KL nats/token':17}{m.kl:>12.4g}{n.kl:>12.4g}{t['kl']:>12.4g}")
    print(f"{'max |dlogit|':17}{m.max_abs:>12.4g}{n.max_abs:>12.4g}{'-':>12}")
    print(f"{'top-1 agreement':17}{m.top1:>12.1%}{n.top1:>12.1%}{'-':>12}")
    for name, nb in r.neighbours.items():
        note = "" if nb["resolved"] else "  (not told apart from the claim here: not counted)"
        print(f"{'KL, ' + name:17}{nb['kl']:>12.4g}{'':>12}{'> ' + format(m.kl, '.4g'):>12}{note}")
    if r.passed:
        print(f"PASS: llama.cpp computes {r.reference} within its own rounding ({seconds:.1f} s)")
    else:
        print(f"FAIL: llama.cpp's logits are farther from the reference than its rounding explains: "
              f"what it applies is not {r.reference} ({seconds:.1f} s)")


def _print_kernel(r) -> None:
    rows = [
        ("scaling", f"{r.scaling}, {r.mode} mode"),
        ("values", (f"{' x '.join(map(str, r.shape))} (tokens x heads x dims), "
                    f"positions {r.positions[0]}..{r.positions[1]}")),
        (f"pyntk ({r.kernel}) vs llama.cpp",
         f"max |d| {r.pyntk_vs_ggml:.3g} ({r.bound_ratio:.2f} of llama.cpp's float32 error bound)"),
        ("pyntk vs exact", f"max |d| {r.pyntk_vs_exact:.3g}"),
        ("llama.cpp vs exact", f"max |d| {r.ggml_vs_exact:.3g}"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    if r.passed:
        print("PASS: pyntk's kernel agrees with llama.cpp's within llama.cpp's float32 error")
    else:
        print("FAIL: pyntk's kernel differs from llama.cpp's by more than llama.cpp's float32 error")
