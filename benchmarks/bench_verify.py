"""`pyntk verify`: time and peak memory of the numpy reference, and of the whole check, on the
real test models and on a generated model of about a billion parameters.

Each measurement runs in a fresh process, which reports its own peak resident memory (VmHWM):

  reference  forward.load + the passes `verify` runs (exact, with llama.cpp's rounding, the two
             base neighbours) over verify's default layout: what pyntk adds to llama.cpp
  verify     `pyntk verify MODEL --json`, llama.cpp included (its memory maps the whole file)

The generated model (--generate, default on) is TinyLlama-shaped (llama, 22 layers, 2048 wide,
feed-forward 5632, 32 heads, 4 KV heads, 32000 tokens: 1.1e9 parameters) with random weights,
written as F16 one tensor at a time and quantized by llama.cpp to Q4_K_M, what people run; it is
kept in --workdir between runs. The seconds per parameter of the reference give a model's time:
an 8B model reads 8e9 parameters.

    python benchmarks/bench_verify.py [--workdir /tmp/pyntk-bench] [--no-generate] [--models A B]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REFERENCE = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
from pyntk import forward, verify
model = forward.load(sys.argv[1])
claimed = model.file_scaling()
layout = verify.make_layout(model.n_vocab, 32, verify.default_position(claimed, model.rope))
passes = verify.reference_passes(claimed)
run = time.perf_counter()
model.run(layout.tokens, layout.positions, passes, layout.visible, rows=layout.queries)
end = time.perf_counter()
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
params = sum(int(np.prod(t.shape)) for t in model.weights.infos.values())
print(json.dumps({"seconds": end - run, "total_seconds": end - start, "peak": peak, "params": params}))
"""

VERIFY = r"""
import json, sys, time
from pyntk.cli import main
start = time.perf_counter()
code = main(["verify", sys.argv[1], "--json"])
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - start, "peak": peak, "code": code}), file=sys.stderr)
"""

SHAPE = dict(n_layer=22, n_embd=2048, n_ff=5632, n_head=32, n_head_kv=4, n_vocab=32000)


def generate(path: Path) -> Path:
    """The ~1B-parameter llama model, F16 written tensor by tensor, then Q4_K_M by llama.cpp."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    if path.exists():
        return path
    f16 = path.with_suffix(".f16.gguf")
    s = SHAPE
    hd = s["n_embd"] // s["n_head"]
    kv = s["n_head_kv"] * hd
    shapes = {"token_embd.weight": (s["n_vocab"], s["n_embd"]), "output_norm.weight": (s["n_embd"],)}
    for i in range(s["n_layer"]):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (s["n_embd"],), b + "ffn_norm.weight": (s["n_embd"],),
                       b + "attn_q.weight": (s["n_embd"], s["n_embd"]), b + "attn_k.weight": (kv, s["n_embd"]),
                       b + "attn_v.weight": (kv, s["n_embd"]), b + "attn_output.weight": (s["n_embd"], s["n_embd"]),
                       b + "ffn_gate.weight": (s["n_ff"], s["n_embd"]), b + "ffn_up.weight": (s["n_ff"], s["n_embd"]),
                       b + "ffn_down.weight": (s["n_embd"], s["n_ff"])})
    w = GGUFWriter(str(f16), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s["n_vocab"])
    w.add_tokenizer_model("none")
    for name, shape in shapes.items():
        dtype = np.float32 if len(shape) == 1 else np.float16
        n = int(np.prod(shape))
        w.add_tensor_info(name, shape, np.dtype(dtype), n * np.dtype(dtype).itemsize,
                          raw_dtype=GGMLQuantizationType.F32 if len(shape) == 1 else GGMLQuantizationType.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, dtype=np.float32))
        else:
            gain = 0.2 if name == "token_embd.weight" else 1.0 / np.sqrt(shape[1])
            w.write_tensor_data((rng.standard_normal(shape, dtype=np.float32) * gain).astype(np.float16))
    w.close()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(path).encode(), params) != 0:
        raise RuntimeError("llama_model_quantize failed")
    f16.unlink()
    return path


def measure(script: str, model: Path, *, stream: str) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(model)], capture_output=True, text=True,
                          env=env, timeout=1800)
    text = proc.stdout if stream == "stdout" else proc.stderr
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"{model}: {proc.stderr[-2000:]}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/pyntk-bench")
    ap.add_argument("--no-generate", action="store_true", help="skip the generated 1B model")
    ap.add_argument("--models", nargs="*", help="models to measure (default: the two real test models)")
    args = ap.parse_args()
    models = [Path(m) for m in (args.models or [ROOT / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf",
                                                   ROOT / ".cache" / "gemma-3-270m-q4_k_m.gguf"])]
    if not args.no_generate:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        models.append(generate(work / "llama-1b-q4_k_m.gguf"))
        print(f"generated model ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    load = os.getloadavg()[0]
    rows = []
    for model in models:
        ref = measure(REFERENCE, model, stream="stdout")
        full = measure(VERIFY, model, stream="stderr")
        rows.append((model.name, ref, full))
        print(f"{model.name}: {json.dumps(ref)} {json.dumps(full)}", file=sys.stderr)
    print(f"\nload average at the start: {load:.1f} (2 cores)\n")
    print("| model | parameters | file | reference: time | reference: peak RSS | ns per parameter | "
          "verify (with llama.cpp): time | verify: peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, ref, full), model in zip(rows, models):
        print(f"| {name} | {ref['params'] / 1e6:.0f} M | {model.stat().st_size / 2**20:.0f} MiB | "
              f"{ref['seconds']:.1f} s | {ref['peak'] / 2**20:.0f} MiB | {ref['seconds'] / ref['params'] * 1e9:.1f} | "
              f"{full['seconds']:.1f} s | {full['peak'] / 2**20:.0f} MiB |")
    big = rows[-1][1]
    print(f"\nat {big['seconds'] / big['params'] * 1e9:.1f} ns per parameter, an 8B model's reference takes "
          f"about {big['seconds'] / big['params'] * 8e9:.0f} s")


if __name__ == "__main__":
    main()
