#!/usr/bin/env python3
"""Record Hugging Face transformers' RoPE frequencies, the oracle of tests/test_freqs_transformers.py.

The tests compare pyntk against the recording, so they need neither torch nor transformers; where
both are installed they also check the recording against transformers live. Run this again, with
both installed (`tools/setup.sh --crosscheck`), after changing the cases below or to follow a new
transformers. The file holds the exact inputs and the versions that computed the values.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np

from pyntk import RopeScaling

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "transformers_freqs.json"
# The methods transformers implements under the same definition as pyntk.
METHODS = ("linear", "ntk", "dynamic", "yarn", "llama3")
DIMS = (32, 64, 80, 96, 128, 256)
BASES = (1e4, 1e5, 5e5, 1e6)
FACTORS = (1.0, 2.0, 4.0, 8.0, 32.0)
CONTEXTS = (2048, 8192)

log = logging.getLogger("record_transformers")


def cases():
    """(RopeScaling, seq_len) for every recorded value: a grid per method, and YaRN with every
    parameter away from its default."""
    for method in METHODS:
        # linear and ntk do not depend on the training context
        contexts = (None,) if method in ("linear", "ntk") else CONTEXTS
        for dims, base, factor, ctx in itertools.product(DIMS, BASES, FACTORS, contexts):
            if method in ("yarn", "llama3") and factor == 1.0:
                continue  # transformers wants a target context above the original for these
            kw = {"alpha" if method == "ntk" else "factor": factor}
            s = RopeScaling(method=method, dims=dims, base=base, original_context=ctx, **kw)
            # dynamic: below the training context (no change) and past it
            for seq_len in (ctx // 2, 3 * ctx + 1) if method == "dynamic" else (None,):
                yield s, seq_len
    yield RopeScaling(method="yarn", dims=128, base=5e5, factor=6.0, original_context=4096,
                      beta_fast=16, beta_slow=2, attn_factor=0.8), None


def hf_inv_freq(s: RopeScaling, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """transformers' own rope function for the same scaling: float32 frequencies (as float64)
    and the attention factor."""
    from transformers import LlamaConfig
    from transformers import modeling_rope_utils as rope_utils

    def config(params: dict, max_positions: int):
        return LlamaConfig(hidden_size=s.dims * 2, num_attention_heads=2, head_dim=s.dims,
                           max_position_embeddings=max_positions,
                           rope_parameters={"rope_theta": s.base, **params})

    L0 = s.original_context or 4096
    if s.method == "linear":
        inv, att = rope_utils._compute_linear_scaling_rope_parameters(
            config({"rope_type": "linear", "factor": s.factor}, L0))
    elif s.method == "dynamic":
        inv, att = rope_utils._compute_dynamic_ntk_parameters(
            config({"rope_type": "dynamic", "factor": s.factor}, L0), seq_len=seq_len)
    elif s.method == "ntk":
        # Static NTK is Dynamic NTK with factor 1 evaluated at alpha * L0.
        inv, att = rope_utils._compute_dynamic_ntk_parameters(
            config({"rope_type": "dynamic", "factor": 1.0}, L0), seq_len=s.alpha * L0)
    elif s.method == "yarn":
        inv, att = rope_utils._compute_yarn_parameters(
            config({"rope_type": "yarn", "factor": s.factor, "beta_fast": s.beta_fast,
                    "beta_slow": s.beta_slow, "original_max_position_embeddings": L0},
                   int(L0 * s.factor)))
        att *= s.attn_factor  # transformers applies attention_factor elsewhere
    elif s.method == "llama3":
        inv, att = rope_utils._compute_llama3_parameters(
            config({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": L0},
                   int(L0 * s.factor)))
    else:
        raise ValueError(f"transformers has no rope type for method {s.method!r}")
    return inv.double().numpy(), float(att)


def record() -> dict:
    import torch
    import transformers

    out = []
    for s, seq_len in cases():
        inv, att = hf_inv_freq(s, seq_len)
        # float32 values, written as the shortest decimal that reads back as the same float32
        out.append({"scaling": s.to_dict(), "seq_len": seq_len, "attention": att,
                    "inv_freq_float32": [float(str(x)) for x in inv.astype(np.float32)]})
    return {"recorded_by": "tools/record_transformers.py", "transformers": transformers.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "cases": out}


def write(data: dict, path: Path) -> None:
    # One case per line, so that a new recording shows as a readable diff.
    head = json.dumps({k: v for k, v in data.items() if k != "cases"}, indent=1)[:-2]
    lines = ",\n".join(json.dumps(c, separators=(",", ":")) for c in data["cases"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{head},\n "cases": [\n{lines}\n]}}\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=OUT, help=f"where to write ({OUT})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    data = record()
    write(data, args.output)
    log.info("%d cases from transformers %s (torch %s) written to %s", len(data["cases"]),
             data["transformers"], data["torch"], args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
