#!/usr/bin/env python3
"""The main job, end to end, on the real test model (SmolLM2-135M-Instruct Q4_1, 8k context).

Copies the model to demo/, extends it with `pyntk gguf-set --alpha 4`, shows the settings
before and after, and loads it in llama-cpp-python with the longer context and no rope flags.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from fetch_model import fetch
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent


def pyntk(*args: str, show: bool = True) -> str:
    if show:
        print(f"\n$ pyntk {shlex.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "pyntk.cli", *args], capture_output=True, text=True)
    if show:
        print(proc.stdout, end="")
    print(proc.stderr, end="", file=sys.stderr)
    if proc.returncode:
        raise SystemExit(proc.returncode)
    return proc.stdout


def main() -> int:
    model = ROOT / "demo" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model.parent.mkdir(exist_ok=True)
    shutil.copyfile(fetch(), model)
    rel = str(model.relative_to(Path.cwd()) if model.is_relative_to(Path.cwd()) else model)
    pyntk("info", rel)
    pyntk("gguf-set", "--alpha", "4", "--yes", rel)
    pyntk("info", rel)
    ctx = json.loads(pyntk("info", rel, "--json", show=False))["context_length"]

    print(f"\n# loading {rel} in llama-cpp-python with n_ctx={ctx}, no rope flags", flush=True)
    llm = Llama(model_path=str(model), n_ctx=ctx, n_threads=2, verbose=False)
    out = llm("The capital of France is", max_tokens=12, temperature=0.0)
    print(f"# n_ctx={llm.n_ctx()}, generated: {out['choices'][0]['text']!r}")
    llm.close()
    print(f"\n# {rel} stays extended; `pyntk gguf-reset {rel}` restores it exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
