"""Tiny llama-architecture GGUF models with random weights, small enough to write in milliseconds.

``write_model`` writes float32 weights with gguf's GGUFWriter; other weight types come from
llama.cpp's own quantizer (llama_model_quantize, "pure": every matrix gets the type), so the
files are exactly what llama.cpp users have. Sizes are multiples of 256 for the K-quants.

The weights are scaled so that attention is peaked (query-key logits of a few units): then the
rotary angles, and so any scaling, show in the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from gguf import GGUFWriter, RopeScalingType

# weight type -> llama_ftype (llama.h) for llama_model_quantize
FTYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K": 14, "Q5_K": 16, "Q6_K": 18, "BF16": 32}
SCALING_TYPES = {"none": RopeScalingType.NONE, "linear": RopeScalingType.LINEAR,
                 "yarn": RopeScalingType.YARN}


def write_model(path, *, weights: str = "F32", n_layer: int = 2, n_embd: int = 256, n_head: int = 4,
                n_head_kv: int = 2, n_ff: int = 512, n_vocab: int = 512, context: int = 4096,
                base: float = 10000.0, scaling_type: Optional[str] = None, factor: Optional[float] = None,
                original_context: Optional[int] = None, tied: bool = True, biases: bool = False,
                freq_factors: Optional[np.ndarray] = None, extra_tensors: Optional[dict] = None,
                seed: int = 0) -> Path:
    """Write a random llama model to ``path`` (a .gguf file) and return the path."""
    path = Path(path)
    if weights != "F32":
        f32 = write_model(path.with_suffix(".f32.gguf"), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                          n_head_kv=n_head_kv, n_ff=n_ff, n_vocab=n_vocab, context=context, base=base,
                          scaling_type=scaling_type, factor=factor, original_context=original_context,
                          tied=tied, biases=biases, freq_factors=freq_factors,
                          extra_tensors=extra_tensors, seed=seed)
        quantize(f32, path, weights)
        f32.unlink()
        return path

    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head

    def matrix(rows: int, cols: int, gain: float) -> np.ndarray:
        # (rows, cols) numpy = GGUF shape (cols, rows): y = x @ w.T
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = GGUFWriter(str(path), "llama")
    w.add_context_length(context)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("none")  # llama.cpp then makes n_vocab placeholder tokens
    if scaling_type is not None:
        w.add_rope_scaling_type(SCALING_TYPES[scaling_type])
    if factor is not None:
        w.add_rope_scaling_factor(factor)
    if original_context is not None:
        w.add_rope_scaling_orig_ctx_len(original_context)

    # rows of norm ~3: tied logits with a spread of a few units
    w.add_tensor("token_embd.weight", (0.2 * rng.standard_normal((n_vocab, n_embd))).astype(np.float32))
    for i in range(n_layer):
        blk = f"blk.{i}."
        w.add_tensor(blk + "attn_norm.weight", norm(n_embd))
        # query and key gains of 2.5 give attention logits with a spread of a few units
        w.add_tensor(blk + "attn_q.weight", matrix(n_embd, n_embd, 2.5))
        w.add_tensor(blk + "attn_k.weight", matrix(n_head_kv * head_dim, n_embd, 2.5))
        w.add_tensor(blk + "attn_v.weight", matrix(n_head_kv * head_dim, n_embd, 1.0))
        w.add_tensor(blk + "attn_output.weight", matrix(n_embd, n_embd, 0.5))
        w.add_tensor(blk + "ffn_norm.weight", norm(n_embd))
        w.add_tensor(blk + "ffn_gate.weight", matrix(n_ff, n_embd, 1.0))
        w.add_tensor(blk + "ffn_up.weight", matrix(n_ff, n_embd, 1.0))
        w.add_tensor(blk + "ffn_down.weight", matrix(n_embd, n_ff, 0.5))
        if biases:
            for name, size in (("attn_q", n_embd), ("attn_k", n_head_kv * head_dim),
                               ("attn_v", n_head_kv * head_dim), ("attn_output", n_embd),
                               ("ffn_up", n_ff), ("ffn_gate", n_ff), ("ffn_down", n_embd)):
                w.add_tensor(blk + name + ".bias", (0.1 * rng.standard_normal(size)).astype(np.float32))
    w.add_tensor("output_norm.weight", norm(n_embd))
    if not tied:
        w.add_tensor("output.weight", matrix(n_vocab, n_embd, 3.0))
    if freq_factors is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(freq_factors, dtype=np.float32))
    for name, values in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(values, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize(src: Path, dst: Path, weights: str) -> Path:
    """Quantize every matrix of ``src`` (token embeddings and output included) with llama.cpp."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[weights]
    params.pure = True
    params.quantize_output_tensor = True
    params.nthread = 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize to {weights} failed")
    return dst
