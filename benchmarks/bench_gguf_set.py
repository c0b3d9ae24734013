"""Benchmark `pyntk gguf-set`: in-place edit time and rewrite throughput against `cp` of the same file.

    python benchmarks/bench_gguf_set.py                        # real model + a generated 2 GiB GGUF
    python benchmarks/bench_gguf_set.py --write-doc docs/BENCH_GGUF_SET.md

Goals (issue 4): an in-place edit takes under 1% of the time `cp` needs for the same file; a rewrite
reaches at least 70% of cp's throughput. Both files are measured in one run, from the page cache
(each file is read once before timing). A rewrite ends with fsync, so it is compared with
`cp` + fsync as well as with plain `cp` (which leaves its writes in the page cache).

The generated file has a Llama-3-sized vocabulary (128k tokens, 280k merges: 6 MB of metadata the
reader must walk) and at least 2 GiB of incompressible tensor data; it is written into a temporary
directory (not sparse, so cp cannot skip holes) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import ggufs  # noqa: E402  (the test GGUF factory)
from pyntk.edit import plan_reset, plan_set  # noqa: E402
from pyntk.writer import apply  # noqa: E402

GiB = 1 << 30


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def _settle() -> None:
    os.sync()  # no dirty pages from the previous step in the next measurement
    time.sleep(0.2)


def time_cp(src: Path, dst: Path, runs: int, fsync: bool, replace: bool = False) -> float:
    """`cp SRC DST` [+ fsync DST] [+ `mv DST OLD` over an existing copy: what an atomic replace costs]."""
    times = []
    old = dst.with_name("cp-old.gguf")
    for _ in range(runs):
        if replace:
            shutil.copy(src, old)
        _settle()
        t = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True)
        if fsync:
            _fsync(dst)
        if replace:
            subprocess.run(["mv", str(dst), str(old)], check=True)
        times.append(time.perf_counter() - t)
        (old if replace else dst).unlink()
    return statistics.median(times)


def time_rewrite(path: Path, runs: int) -> float:
    """First edit of a file (a rewrite), then reset (a rewrite back); median of the set times."""
    times = []
    for _ in range(runs):
        _settle()
        t = time.perf_counter()
        result = apply(plan_set(path, alpha=4))
        times.append(time.perf_counter() - t)
        assert result.mode == "rewrite"
        _settle()
        assert apply(plan_reset(path)).mode == "rewrite"
    return statistics.median(times)


def time_in_place(path: Path, runs: int) -> tuple:
    """Edits of an already edited file: plan + apply (re-validation under the lock, pwrite, fsync)."""
    apply(plan_set(path, alpha=4))
    total, no_fsync = [], []
    for i in range(runs):
        alpha = 2.0 + (i % 2)
        t = time.perf_counter()
        result = apply(plan_set(path, alpha=alpha))
        total.append(time.perf_counter() - t)
        assert result.mode == "in-place"
    # the same edit minus its fsync, to show what the disk flush costs
    real_fsync = os.fsync
    os.fsync = lambda fd: None
    try:
        for i in range(runs):
            t = time.perf_counter()
            apply(plan_set(path, alpha=2.0 + (i % 2)))
            no_fsync.append(time.perf_counter() - t)
    finally:
        os.fsync = real_fsync
    apply(plan_reset(path))
    return statistics.median(total), statistics.median(no_fsync)


def time_cli(path: Path, runs: int) -> float:
    """`pyntk gguf-set` end to end in a fresh process (Python start-up included), in place."""
    apply(plan_set(path, alpha=4))
    times = []
    for i in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pyntk.cli", "gguf-set", "--alpha", str(2 + i % 2), "--yes",
                        "--json", str(path)], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    apply(plan_reset(path))
    return statistics.median(times)


def bench(name: str, path: Path, workdir: Path, runs: int) -> dict:
    size = path.stat().st_size
    _warm(path)
    dst = workdir / "cp-target.gguf"
    cp = time_cp(path, dst, runs, fsync=False)
    cp_sync = time_cp(path, dst, runs, fsync=True)
    cp_replace = time_cp(path, dst, runs, fsync=True, replace=True)
    rewrite = time_rewrite(path, runs)
    in_place, in_place_no_fsync = time_in_place(path, max(10, runs * 5))
    cli = time_cli(path, 3)
    row = dict(name=name, size=size, cp=cp, cp_sync=cp_sync, cp_replace=cp_replace, rewrite=rewrite, in_place=in_place,
               in_place_no_fsync=in_place_no_fsync, cli=cli)
    print(f"{name}: {size / GiB:.2f} GiB  cp {cp:.3f} s  cp+fsync {cp_sync:.3f} s  cp+fsync+mv {cp_replace:.3f} s  "
          f"rewrite {rewrite:.3f} s  "
          f"in place {in_place * 1e3:.2f} ms ({in_place_no_fsync * 1e3:.2f} ms without fsync)  "
          f"CLI in place {cli * 1e3:.0f} ms", file=sys.stderr)
    return row


def table(rows: list) -> str:
    out = ["| file | size | `cp` | `cp` + fsync | `cp` + fsync + `mv` over the old file | rewrite (first edit) "
           "| rewrite throughput vs cp (goal ≥ 70%) / vs cp+fsync / vs cp+fsync+mv "
           "| in-place edit | in place vs cp (goal < 1%) | in place without fsync | CLI, in place |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = r["size"] / 2**20
        out.append(
            f"| {r['name']} | {mb:,.0f} MiB | {r['cp'] * 1e3:,.0f} ms ({mb / r['cp']:,.0f} MiB/s) "
            f"| {r['cp_sync'] * 1e3:,.0f} ms | {r['cp_replace'] * 1e3:,.0f} ms "
            f"| {r['rewrite'] * 1e3:,.0f} ms ({mb / r['rewrite']:,.0f} MiB/s) "
            f"| {r['cp'] / r['rewrite']:.0%} / {r['cp_sync'] / r['rewrite']:.0%} / {r['cp_replace'] / r['rewrite']:.0%} "
            f"| {r['in_place'] * 1e3:.1f} ms | {r['in_place'] / r['cp']:.2%} "
            f"| {r['in_place_no_fsync'] * 1e3:.1f} ms ({r['in_place_no_fsync'] / r['cp']:.2%}) "
            f"| {r['cli'] * 1e3:.0f} ms |")
    return "\n".join(out)


def verdict(rows: list) -> str:
    lines = []
    for r in rows:
        ok_in_place = r["in_place"] / r["cp"] < 0.01
        ok_rewrite = r["cp"] / r["rewrite"] >= 0.70
        lines.append(
            f"- {r['name']}: in-place edit {r['in_place'] / r['cp']:.2%} of cp's time "
            f"({'goal met' if ok_in_place else 'goal missed'}); rewrite at {r['cp'] / r['rewrite']:.0%} of "
            f"cp's throughput ({'goal met' if ok_rewrite else 'goal missed'}), "
            f"{r['cp_replace'] / r['rewrite']:.0%} of a durable replace done with cp + fsync + mv.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(os.environ.get(
        "PYNTK_TEST_MODEL", ROOT / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf")))
    p.add_argument("--big-gib", type=float, default=2.0, help="tensor data of the generated file (GiB)")
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a new temporary one)")
    p.add_argument("--runs", type=int, default=3, help="repetitions of each copy/rewrite (median)")
    p.add_argument("--write-doc", type=Path, help="also write the markdown report here")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pyntk-bench-", dir=args.dir))
    rows = []
    try:
        big_bytes = int(args.big_gib * GiB)
        need = 4 * big_bytes + 4 * args.model.stat().st_size + GiB
        free = shutil.disk_usage(workdir).free
        if free < need:
            print(f"bench: need {need / GiB:.1f} GiB free in {workdir}, have {free / GiB:.1f}", file=sys.stderr)
            return 1
        model = workdir / args.model.name
        shutil.copy(args.model, model)
        rows.append(bench(f"{args.model.name} (real)", model, workdir, args.runs))
        model.unlink()

        t = time.perf_counter()
        big = ggufs.write_model(workdir / "big.gguf", "llama", vocab_size=128_000, merges=280_000,
                                data_bytes=big_bytes, context_length=8192, n_embd=4096, n_head=32)
        print(f"generated {big.stat().st_size / GiB:.2f} GiB in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows.append(bench("generated, 128k vocab", big, workdir, args.runs))
        big.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report = table(rows)
    print(report)
    if args.write_doc:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        except OSError:
            pass
        fs = subprocess.run(["df", "-T", str(args.dir or tempfile.gettempdir())], capture_output=True,
                            text=True).stdout.splitlines()[-1].split()[1]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        args.write_doc.write_text(DOC.format(table=report, cpu=cpu, cores=os.cpu_count(), fs=fs, load=load,
                                             python=platform.python_version(), runs=args.runs,
                                             verdict=verdict(rows)))
    return 0


DOC = """# gguf-set benchmark

`python benchmarks/bench_gguf_set.py --write-doc docs/BENCH_GGUF_SET.md`
({cpu}, {cores} cores shared with other jobs (load average {load:.1f} at the end), {fs} file system,
Python {python}; medians of {runs} copies and rewrites and of at least 10 in-place edits; every file read
once into the page cache first).

{table}

## Against the goals

{verdict}

Why a rewrite cannot reach 70% of plain `cp`: `cp` leaves its writes in the page cache, while a rewrite
must make the new file durable before it replaces the original (fsync: the disk's write speed, not
memory's), and replacing the original frees its blocks. Done with coreutils, that durable replace is
`cp` + fsync + `mv`, the last ratio above. File systems with reflinks (btrfs, XFS) make
`copy_file_range` a clone, and the copy then costs almost nothing.

The in-place edit has a floor of a few milliseconds whatever the file size (Python parses the tensor
infos twice, before and under the lock, and fsync flushes one block), so against `cp` of a small file
(94 MiB from the page cache: about 80 ms) it can exceed 1%; against large files it is far below. A
Llama-3-sized vocabulary costs nothing here: pyntk's layout hint lets the reader skip it.

## Notes

- **cp**: coreutils `cp` of the same file (its writes stay in the page cache); **cp + fsync**: the same
  followed by fsync of the copy, which is what a rewrite does before its atomic rename; **cp + fsync + mv**:
  then `mv` of the copy over an existing copy, which frees the old file's blocks as `os.replace` does (on
  this VM's ext4, mounted with `discard`, freeing 2 GiB takes about 2 s).
- **rewrite**: the first `gguf-set` of a file (`plan_set` + `apply`): parse, metadata re-encoded with
  pyntk's keys, tensor data streamed with `copy_file_range` in 32 MiB chunks (write-back of each started
  at once with POSIX_FADV_DONTNEED), fsync, re-parse of the new file to verify it,
  `os.replace`, fsync of the directory. Goal: at least 70% of cp's throughput.
- **in-place edit**: a later `gguf-set` of the same file (`plan_set` + `apply`): parse (the pyntk layout
  hint skips the vocabulary), re-parse and re-check under the lock, one `pwrite`, fsync. Goal: under 1%
  of cp's time. The "without fsync" column is the same edit with the flush skipped, to show that what
  remains is the disk's flush latency.
- **CLI, in place**: `python -m pyntk.cli gguf-set --alpha N --yes --json FILE` in a new process: Python
  and numpy/gguf start-up dominate.
- The generated file has a Llama-3-sized vocabulary (128k tokens, 280k merges) and incompressible tensor
  data, written non-sparse in a temporary directory and deleted afterwards.
"""

if __name__ == "__main__":
    sys.exit(main())
