"""Throughput of pyntk.rotate against llama.cpp's kernel, numpy, and a plain copy.

Every implementation works on the same arrays: the source and destination buffers of one
prepared ggml graph per mode, [tokens, 32 heads, 128] float32, positions 0..tokens-1.
The copy (np.copyto, one thread) is what memory bandwidth allows for reading one array
and writing another, the least any rotation must do. Runs are interleaved round-robin and
the best of each is kept, so background load shifts all columns alike.

    python benchmarks/bench_rotate.py [--tokens 4096 32768] [--repeats 7]
                                      [--markdown docs/BENCH_ROTATE.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version

# One BLAS thread: idle BLAS workers would only compete with the threads measured here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import pyntk  # noqa: E402
from pyntk import ggml  # noqa: E402

HEADS, HEAD_DIM = 32, 128
SCALING = pyntk.RopeScaling("yarn", dims=HEAD_DIM, factor=4, original_context=4096)


def numpy_rope(x, positions, mode, out):
    """A plain vectorised numpy RoPE, as one would write it without pyntk."""
    inv, attention = pyntk.inv_freq(SCALING)
    theta = positions[:, None] * inv
    cos = (np.cos(theta) * attention).astype(np.float32)[:, None, :]
    sin = (np.sin(theta) * attention).astype(np.float32)[:, None, :]
    half = HEAD_DIM // 2
    if mode == "neox":
        x0, x1, y0, y1 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    else:
        x0, x1, y0, y1 = x[..., 0::2], x[..., 1::2], out[..., 0::2], out[..., 1::2]
    y0[...] = x0 * cos - x1 * sin
    y1[...] = x0 * sin + x1 * cos
    return out


def numpy_complex_rope(x, positions, out):
    """NORMAL mode as one complex64 multiply (Meta's llama reference does this in torch): the
    fastest numpy form for adjacent pairs, and so a stronger baseline than numpy_rope."""
    inv, attention = pyntk.inv_freq(SCALING)
    turn = (np.exp(1j * (positions[:, None] * inv)) * attention).astype(np.complex64)
    np.multiply(x.view(np.complex64), turn[:, None, :], out=out.view(np.complex64))
    return out


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def candidates(x, out, scratch, positions, mode, graph) -> dict:
    """(implementation, threads) -> a call that runs it once."""
    runs = {("copy", 1): lambda: np.copyto(out, x),
            ("numpy", 1): lambda: numpy_rope(x, positions, mode, out)}
    if mode == "normal":
        runs[("numpy complex64", 1)] = lambda: numpy_complex_rope(x, positions, out)
    for threads in (1, 2):
        if graph is not None:
            runs[("llama.cpp", threads)] = lambda t=threads: graph.compute(t)
        runs[("pyntk", threads)] = lambda t=threads: pyntk.rotate(
            x, positions, SCALING, mode=mode, out=out, threads=t)
        runs[("pyntk in place", threads)] = lambda t=threads: pyntk.rotate(
            scratch, positions, SCALING, mode=mode, threads=t)
    return runs


def measure(tokens: int, repeats: int, numpy_repeats: int, have_ggml: bool) -> list:
    rng = np.random.default_rng(0)
    positions = np.arange(tokens, dtype=np.int64)
    shape = (tokens, HEADS, HEAD_DIM)
    ggml_params = {k: v for k, v in ggml.ggml_args(SCALING).items() if k != "n_rot"}
    rows = []
    for mode in ("neox", "normal"):
        graph = None
        if have_ggml:
            graph = ggml.RopeGraph(shape, np.float32, positions, HEAD_DIM, mode, threads=2,
                                   computes=2 * repeats + 2, **ggml_params)
            x, out = graph.src, graph.dst
        else:
            x, out = np.empty(shape, np.float32), np.empty(shape, np.float32)
        x[...] = rng.standard_normal(shape, dtype=np.float32)
        out[...] = 0  # fault every page in before timing
        scratch = np.empty_like(x)  # pyntk in place, without disturbing x
        runs = candidates(x, out, scratch, positions, mode, graph)
        best = {key: float("inf") for key in runs}
        for r in range(repeats):
            for key, run in runs.items():
                if key[0].startswith("numpy") and r >= numpy_repeats:
                    continue
                time.sleep(0.02)  # let other threads (ggml's OpenMP pool) go idle
                start = time.perf_counter()
                run()
                best[key] = min(best[key], time.perf_counter() - start)
        for (name, threads), seconds in best.items():
            rows.append(dict(tokens=tokens, mode=mode, name=name, threads=threads,
                             seconds=seconds, gbps=2 * x.nbytes / seconds / 1e9,
                             of_copy=best[("copy", 1)] / seconds))
        if graph is not None:
            graph.close()
    return rows


def table(rows: list) -> str:
    lines = ["| tokens | mode | implementation | threads | ms | GB/s | × copy |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['mode']} | {r['name']} | {r['threads']} | "
                     f"{r['seconds'] * 1e3:.1f} | {r['gbps']:.1f} | {r['of_copy']:.2f} |")
    return "\n".join(lines)


def find(rows: list, tokens: int, mode: str, name: str, threads: int):
    """The row measuring name on tokens in mode with threads, or None."""
    return next((r for r in rows if (r["tokens"], r["mode"], r["name"], r["threads"])
                 == (tokens, mode, name, threads)), None)


def verdicts(rows: list) -> list:
    def get(tokens, mode, name, threads):
        return find(rows, tokens, mode, name, threads)

    out = []
    for tokens in sorted({r["tokens"] for r in rows}):
        for mode in ("neox", "normal"):
            one, two = get(tokens, mode, "pyntk", 1), get(tokens, mode, "pyntk", 2)
            copy, numpy_row = get(tokens, mode, "copy", 1), get(tokens, mode, "numpy", 1)
            llama = get(tokens, mode, "llama.cpp", 1)
            # threads=None, the default, uses every core; numpy's own operations use one.
            # A copy's own ratio to numpy tells whether one thread can reach 20× at all.
            on_one = numpy_row["seconds"] / one["seconds"]
            on_default = numpy_row["seconds"] / min(one["seconds"], two["seconds"])
            line = (f"{tokens} {mode}: 1 thread {one['of_copy']:.2f}× copy "
                    f"[{'ok' if one['of_copy'] >= 0.8 else 'below 0.8'}], "
                    f"2 threads {one['seconds'] / two['seconds']:.2f}× 1 thread, "
                    f"{on_one:.0f}× numpy on 1 thread [{'ok' if on_one >= 20 else 'below 20'}] "
                    f"and {on_default:.0f}× with the default threads "
                    f"[{'ok' if on_default >= 20 else 'below 20'}] (a copy "
                    f"is {numpy_row['seconds'] / copy['seconds']:.0f}× numpy)")
            complex_row = get(tokens, mode, "numpy complex64", 1)
            if complex_row:
                line += f" ({complex_row['seconds'] / one['seconds']:.1f}× numpy complex64)"
            if llama:
                llama2 = get(tokens, mode, "llama.cpp", 2)
                line += (f", {llama['seconds'] / one['seconds']:.2f}× llama.cpp on 1 thread, "
                         f"{llama2['seconds'] / two['seconds']:.2f}× on 2")
            out.append(line)
    return out


def summary(rows: list) -> str:
    """The README's table: one line per array and mode, × against the copy."""
    def cell(tokens, mode, name, threads):
        r = find(rows, tokens, mode, name, threads)
        return "—" if r is None else f"{r['seconds'] * 1e3:.1f} ms ({r['of_copy']:.2f}×)"

    columns = [("copy", 1), ("numpy", 1), ("llama.cpp", 1), ("pyntk", 1), ("pyntk", 2),
               ("pyntk in place", 1)]
    lines = ["| tokens | mode | " + " | ".join(f"{n}, {t} thread{'s' if t > 1 else ''}"
                                                for n, t in columns) + " |",
             "|---:|---|" + "---:|" * len(columns)]
    for tokens in sorted({r["tokens"] for r in rows}):
        for mode in ("neox", "normal"):
            lines.append(f"| {tokens} | {mode} | "
                         + " | ".join(cell(tokens, mode, n, t) for n, t in columns) + " |")
    return "\n".join(lines)


MARKDOWN_HEAD = """# pyntk.rotate throughput

Written by `python benchmarks/bench_rotate.py --markdown docs/BENCH_ROTATE.md`.

What each row runs, on the same two arrays (the source and destination buffers of a
prepared llama.cpp graph):

- **copy**: `np.copyto(out, x)`, one thread: reading one array and writing another at the
  speed memory allows, the floor for any rotation into `out`. glibc's memcpy writes around
  the caches only from its `x86_non_temporal_threshold` on (192 MiB on the machine below, see
  `ld.so --list-tunables`), so the 64 MiB copy of 4096 tokens first reads every destination
  line and is slower per byte than the 512 MiB one.
- **numpy**: RoPE written from the formulas with numpy slices (`benchmarks/bench_rotate.py`,
  `numpy_rope`); **numpy complex64**: NORMAL mode as one complex multiply, the fastest numpy
  form for adjacent pairs.
- **llama.cpp**: `ggml_rope_ext` from llama-cpp-python's libggml (`pyntk.ggml.RopeGraph`),
  float32 angles, one cos/sin table per position, scalar rotation loop.
- **pyntk**: `pyntk.rotate(x, positions, scaling, mode=..., out=out, threads=...)`; outputs of
  16 MiB and more are written around the caches, with non-temporal stores of whole aligned
  64-byte lines (AVX-512). **pyntk in place**: `out=None`.

"× copy" is the copy's time over the row's time: 1.00 runs at memory bandwidth. The numpy
rows vary most from run to run (their temporaries are fresh memory each time: 100-350 ms were
seen for the same 4096-token call), and a shared machine moves every ratio by about ±0.1.

"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768],
                        help="arrays of [TOKENS, 32, 128] float32 to run (default: 4096 32768)")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each (best kept)")
    parser.add_argument("--numpy-repeats", type=int, default=3, help="runs of the slow numpy one")
    parser.add_argument("--markdown", help="also write the results to this Markdown file")
    args = parser.parse_args(argv)

    load_before = load_average()
    have_ggml = ggml.available()
    if not have_ggml:
        print("llama-cpp-python not installed: no llama.cpp column", file=sys.stderr)
    rows = []
    for tokens in args.tokens:
        print(f"measuring {tokens} tokens ...", file=sys.stderr)
        rows += measure(tokens, args.repeats, min(args.numpy_repeats, args.repeats), have_ggml)

    features = pyntk.cpu_features()
    try:
        llama_version = version("llama-cpp-python")
    except PackageNotFoundError:
        llama_version = "not installed"
    setup = [
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; pyntk kernel "
        f"`{features['kernel']}` (available: {', '.join(features['kernels'])}); "
        f"llama-cpp-python {llama_version}; numpy {np.__version__}",
        f"Arrays: [tokens, {HEADS}, {HEAD_DIM}] float32, positions 0..tokens-1, "
        f"{SCALING.describe()}; best of {args.repeats} runs (numpy: "
        f"{min(args.numpy_repeats, args.repeats)}). GB/s counts the bytes read plus the bytes "
        f"written. Load average before and after: {load_before} / {load_average()} "
        f"(other work on the machine slows every column, the 2-thread ones most).",
    ]
    text = "\n".join(setup) + "\n\n" + table(rows) + "\n\n" + "\n".join(
        f"- {v}" for v in verdicts(rows)) + "\n\nIn short (the README's table):\n\n" + summary(rows)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(MARKDOWN_HEAD + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
