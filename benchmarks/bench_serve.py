#!/usr/bin/env python3
"""Benchmark: generation through `pyntk serve` against llama-cpp-python called directly.

  throughput  the same prompt, greedy, the same number of tokens: llama_cpp.Llama.create_completion
              in this process (its cache reset first: llama-cpp-python skips a prompt it has just
              seen, pyntk serve processes every prompt in full), and `pyntk serve` (a child
              process on 127.0.0.1) through the `openai` client, streamed and not. Tokens per
              second = completion tokens / wall time of the whole request (prompt included, the
              same work on both sides). Goal: the server keeps at least 95% of that rate.
  ttft        time to first token of a long prompt (default 16000 tokens + 16 to generate), which
              the server runs in its 16128-token bucket with YaRN factor 16128/8192; the same
              through llama-cpp-python set up by hand with that YaRN (stream=True, first chunk).
              The server's first request of a bucket also creates that bucket's context.

Repetitions are interleaved and the best of each kept (other processes only ever slow a run).

    python benchmarks/bench_serve.py                       # 256 tokens x 3, one 16k prompt x 2
    python benchmarks/bench_serve.py --tokens 128 --reps 2 --ttft-tokens 8000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from fetch_model import fetch as fetch_model  # noqa: E402
from fetch_text import fetch as fetch_text  # noqa: E402

from pyntk.dynamic import DynamicPolicy  # noqa: E402
from pyntk.llama import Model  # noqa: E402


class Server:
    def __init__(self, model_path: Path, threads: int, max_context: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyntk.cli", "serve", str(model_path), "--port", "0", "--threads",
             str(threads), "--max-context", str(max_context), "--dynamic", "yarn", "--contexts", "1"],
            stderr=subprocess.PIPE, text=True)
        self.lines: list = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 120
        self.url = None
        while self.url is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("pyntk serve did not start:\n" + "".join(self.lines))
            found = [re.search(r"on (http://[\d.]+:\d+)", line) for line in list(self.lines)]
            self.url = next((m.group(1) for m in found if m), None)
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(2)
        self.proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens to generate (default 256)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--ttft-tokens", type=int, default=16000, help="long prompt length (default 16000)")
    parser.add_argument("--ttft-reps", type=int, default=2, help="long prompt repetitions (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import llama_cpp
    import openai

    model_path = fetch_model()
    text = fetch_text().read_text(encoding="utf-8")
    model = Model(model_path)
    L0 = model.training_context
    # a prompt from the middle of the FAQ: the model goes on writing FAQ-like prose
    prompt = prefix(model, text[8000:], 100)
    long_prompt = prefix(model, text, args.ttft_tokens)
    prompt_tokens, long_tokens = len(model.tokenize(prompt)), len(model.tokenize(long_prompt))

    load = os.getloadavg()
    server = Server(model_path, args.threads, 2 * L0)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=3600, max_retries=0)
    direct = llama_cpp.Llama(str(model_path), n_ctx=L0, n_threads=args.threads,
                             n_threads_batch=args.threads, verbose=False)
    greedy = dict(max_tokens=args.tokens, temperature=0)
    best = {"llama-cpp-python": 0.0, "server": 0.0, "server, streamed": 0.0}
    counts = set()
    try:
        for _ in range(args.reps):
            direct.reset()  # or it would skip the prompt it has seen; the server processes it in full
            t0 = time.perf_counter()
            out = direct.create_completion(prompt, **greedy)
            rate = out["usage"]["completion_tokens"] / (time.perf_counter() - t0)
            best["llama-cpp-python"] = max(best["llama-cpp-python"], rate)
            counts.add((out["usage"]["completion_tokens"], out["choices"][0]["text"]))

            t0 = time.perf_counter()
            got = client.completions.create(model="m", prompt=prompt, **greedy)
            rate = got.usage.completion_tokens / (time.perf_counter() - t0)
            best["server"] = max(best["server"], rate)
            counts.add((got.usage.completion_tokens, got.choices[0].text))

            t0 = time.perf_counter()
            pieces = [c.choices[0].text for c in client.completions.create(model="m", prompt=prompt,
                                                                          stream=True, **greedy)]
            rate = got.usage.completion_tokens / (time.perf_counter() - t0)
            best["server, streamed"] = max(best["server, streamed"], rate)
            counts.add((got.usage.completion_tokens, "".join(pieces)))
        direct.close()
        if len(counts) != 1:
            print("warning: the three ways generated different texts", file=sys.stderr)
        n_generated = next(iter(counts))[0]

        # time to first token of the long prompt, in the server's bucket and set up by hand
        if not args.ttft_reps:
            return report(args, best, prompt_tokens, n_generated, load)
        policy = DynamicPolicy("yarn", model.info.base, model.info.dims, L0, 2 * L0)
        bucket = policy.bucket_for(long_tokens + 16)
        rope = {} if bucket <= L0 else dict(rope_scaling_type=2, rope_freq_scale=L0 / bucket,
                                            yarn_orig_ctx=L0)
        yarn = llama_cpp.Llama(str(model_path), n_ctx=bucket, n_threads=args.threads,
                               n_threads_batch=args.threads, verbose=False, **rope)
        ttft = {"llama-cpp-python": [], "server": []}
        for _ in range(args.ttft_reps):
            yarn.reset()
            t0 = time.perf_counter()
            next(iter(yarn.create_completion(long_prompt, max_tokens=16, temperature=0, stream=True)))
            ttft["llama-cpp-python"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with client.completions.create(model="m", prompt=long_prompt, max_tokens=16,
                                           temperature=0, stream=True) as stream:
                next(c for c in stream if c.choices and c.choices[0].text)
                ttft["server"].append(time.perf_counter() - t0)
        yarn.close()
    finally:
        server.stop()

    report(args, best, prompt_tokens, n_generated, load)
    print(f"## Time to first token: {long_tokens}-token prompt + 16 to generate, bucket {bucket} "
          f"({policy.scaling_for(bucket).describe()}), {args.threads} threads\n")
    print("| way | " + " | ".join(f"run {i + 1}" for i in range(args.ttft_reps)) + " |")
    print("|---|" + "---:|" * args.ttft_reps)
    for k, v in ttft.items():
        print(f"| {k} | " + " | ".join(f"{t:.1f} s" for t in v) + " |")
    log = "".join(server.lines)
    print("\nserver log:\n" + "\n".join("    " + line for line in log.splitlines()))
    return 0


def report(args, best: dict, prompt_tokens: int, n_generated: int, load) -> int:
    ratio = {k: v / best["llama-cpp-python"] for k, v in best.items()}
    print(f"load average before / after: {load[0]:.2f} / {os.getloadavg()[0]:.2f} "
          f"(other processes on this machine's {os.cpu_count()} cores)\n")
    print(f"## Throughput: {prompt_tokens}-token prompt, {n_generated} tokens generated (greedy), "
          f"{args.threads} threads, best of {args.reps}\n")
    print("| way | tokens/s | / llama-cpp-python |\n|---|---:|---:|")
    for k, v in best.items():
        print(f"| {k} | {v:.1f} | {ratio[k]:.3f} |")
    goal = min(ratio["server"], ratio["server, streamed"])
    print(f"\nGoal >= 0.95 of llama-cpp-python: {'met' if goal >= 0.95 else 'NOT met'} ({goal:.3f}).\n")
    return 0


def prefix(model: Model, text: str, n_tokens: int) -> str:
    """The longest start of ``text`` that is at most ``n_tokens`` tokens."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(model.tokenize(text[:mid])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


if __name__ == "__main__":
    sys.exit(main())
