#!/usr/bin/env python3
"""Benchmark: `pyntk ppl`'s evaluation against llama-cpp-python evaluating the same tokens.

One run, interleaved repetitions (the best of each is kept, which filters out other processes):
  pyntk        perplexity.evaluate: the windows decoded, log-softmax of the scored rows
  llama        llama_cpp.Llama(logits_all=True).eval(window) per window: the same tokens, with
               the logits a perplexity needs (llama-cpp-python's own way to get them)
  forward      llama_cpp.Llama(logits_all=False).eval(window): the forward pass alone
The claim checked: pyntk costs at most 10% more than `llama`.

--memory N runs `pyntk ppl` at context N in a child process and compares its peak resident memory
with the model file + its KV cache + 1 GB.

    python benchmarks/bench_ppl.py                 # 2 windows of 1024 tokens, 3 repetitions
    python benchmarks/bench_ppl.py --memory 16384  # peak memory at 16k (minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from fetch_model import fetch as fetch_model  # noqa: E402
from fetch_text import fetch as fetch_text  # noqa: E402

from pyntk.llama import Model  # noqa: E402
from pyntk.perplexity import Candidate, evaluate  # noqa: E402
from pyntk.scaling import RopeScaling  # noqa: E402


def bench_time(model_path: Path, text: str, ctx: int, windows: int, reps: int, threads: int) -> dict:
    import llama_cpp

    model = Model(model_path, threads=threads)
    tokens = model.tokenize(text)[:ctx * windows]
    if len(tokens) < ctx * windows:
        raise SystemExit(f"the text has only {len(tokens)} tokens; use a smaller --ctx or --windows")
    info = model.info
    none = [Candidate("none", RopeScaling(method="none", base=info.base, dims=info.dims))]
    common = dict(n_ctx=ctx, verbose=False, n_threads=threads, n_threads_batch=threads)
    llms = {"llama": llama_cpp.Llama(str(model_path), logits_all=True, **common),
            "forward": llama_cpp.Llama(str(model_path), logits_all=False, **common)}
    best = {"pyntk": float("inf"), "llama": float("inf"), "forward": float("inf")}
    ppl = None
    for _ in range(reps):
        t0 = time.perf_counter()
        (result,) = evaluate(model, tokens, [ctx], none, span=ctx * windows)
        best["pyntk"] = min(best["pyntk"], time.perf_counter() - t0)
        ppl = result.ppl
        for name, llm in llms.items():
            t0 = time.perf_counter()
            for w in range(windows):
                llm.reset()
                llm.eval(tokens[w * ctx:(w + 1) * ctx].tolist())
            best[name] = min(best[name], time.perf_counter() - t0)
    return {"ctx": ctx, "windows": windows, "tokens": ctx * windows, "repetitions": reps,
            "threads": threads, "seconds": best, "ppl": ppl,
            "pyntk_over_llama": best["pyntk"] / best["llama"],
            "pyntk_over_forward": best["pyntk"] / best["forward"]}


def bench_memory(model_path: Path, text_path: Path, ctx: int, threads: int) -> dict:
    import llama_cpp

    proc = subprocess.run([sys.executable, "-m", "pyntk.cli", "ppl", str(model_path), "--text",
                           str(text_path), "--ctx", str(ctx), "--method", "none", "--json",
                           "--threads", str(threads)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    params = llama_cpp.llama_model_default_params()  # memory-mapped: loading costs nothing here
    m = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    n_layer = llama_cpp.llama_model_n_layer(m)
    n_head, n_head_kv = llama_cpp.llama_model_n_head(m), llama_cpp.llama_model_n_head_kv(m)
    head_dim = llama_cpp.llama_model_n_embd(m) // n_head
    llama_cpp.llama_model_free(m)
    kv = 2 * n_layer * ctx * n_head_kv * head_dim * 2  # K and V, float16
    size = model_path.stat().st_size
    return {"ctx": ctx, "peak_rss": peak, "model_file": size, "kv_cache": kv,
            "peak_minus_model_and_kv": peak - size - kv, "within_1GB": peak - size - kv <= 1 << 30,
            "ppl": json.loads(proc.stdout)["results"][0]["ppl"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", type=int, metavar="N", help="measure peak memory at context N instead")
    args = parser.parse_args()
    model_path, text_path = fetch_model(), fetch_text()
    if args.memory:
        r = bench_memory(model_path, text_path, args.memory, args.threads)
        mb = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
        print(f"pyntk ppl at {r['ctx']} tokens: peak RSS {mb(r['peak_rss'])} = model file "
              f"{mb(r['model_file'])} + KV cache {mb(r['kv_cache'])} + {mb(r['peak_minus_model_and_kv'])} "
              f"({'within' if r['within_1GB'] else 'OVER'} 1 GiB); ppl {r['ppl']:.3f}")
    else:
        r = bench_time(model_path, text_path.read_text(encoding="utf-8"), args.ctx, args.windows,
                       args.reps, args.threads)
        s = r["seconds"]
        print(f"{r['tokens']} tokens ({r['windows']} x {r['ctx']}), {r['threads']} threads, best of {r['repetitions']}:")
        print(f"  pyntk ppl (evaluate)                  {s['pyntk']:8.2f} s")
        print(f"  llama-cpp-python, logits_all=True     {s['llama']:8.2f} s   pyntk/this = {r['pyntk_over_llama']:.3f}")
        print(f"  llama-cpp-python, forward pass only   {s['forward']:8.2f} s   pyntk/this = {r['pyntk_over_forward']:.3f}")
        print(f"  claim (pyntk <= 1.10 x llama-cpp-python with logits): "
              f"{'met' if r['pyntk_over_llama'] <= 1.10 else 'NOT met'}")
    print(json.dumps(r), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
