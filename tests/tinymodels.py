"""Tiny GGUF models with random weights, small enough to write in milliseconds: llama, qwen2,
qwen3, gemma2, gemma3 and phi3, each with the tensors llama.cpp's loader for it expects
(src/models/ARCH.cpp, load_arch_tensors).

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
                 "yarn": RopeScalingType.YARN, "longrope": RopeScalingType.LONGROPE}
ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
# the bias tensors each graph loads (qwen2: q/k/v only; llama: every matrix but the output)
BIASES = {"llama": ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_gate", "ffn_down"),
          "qwen2": ("attn_q", "attn_k", "attn_v")}


def write_model(path, *, arch: str = "llama", weights: str = "F32", n_layer: int = 2, n_embd: int = 256,
                n_head: int = 4, n_head_kv: int = 2, n_ff: int = 512, n_vocab: int = 512,
                context: int = 4096, base: float = 10000.0, scaling_type: Optional[str] = None,
                factor: Optional[float] = None, original_context: Optional[int] = None,
                attn_factor: Optional[float] = None, tied: bool = True, biases: bool = False,
                freq_factors: Optional[np.ndarray] = None, extra_tensors: Optional[dict] = None,
                seed: int = 0, head_dim: Optional[int] = None, rope_dims: Optional[int] = None,
                sliding_window: Optional[int] = None, window_pattern: Optional[int] = None,
                base_swa: Optional[float] = None, softcap: Optional[float] = None,
                attn_softcap: Optional[float] = None,
                long_factors: Optional[np.ndarray] = None, short_factors: Optional[np.ndarray] = None,
                fused_qkv: Optional[bool] = None) -> Path:
    """Write a random ``arch`` model to ``path`` (a .gguf file) and return the path.

    head_dim        attention.key_length/value_length when not n_embd / n_head (Gemma 3)
    rope_dims       rope.dimension_count when not the whole head (partial rotary: phi3, gemma3)
    tied            no output.weight: the token embeddings are the output matrix (gemma2 always)
    sliding_window  gemma2/3: attention.sliding_window (gemma2: 4096 when absent); window_pattern
                    its sliding_window_pattern (every n-th layer global; llama.cpp's default 2 for
                    gemma2, 6 for gemma3); base_swa rope.freq_base_swa
    softcap         final_logit_softcapping (gemma2: 30 when absent, gemma3: none)
    attn_softcap    gemma2: attn_logit_softcapping (50 when absent)
    long/short_factors  LongRoPE factor tensors (phi3; llama with scaling_type "longrope")
    fused_qkv       one attn_qkv matrix instead of attn_q/k/v (default: phi3 only, as converted)
    """
    args = {k: v for k, v in locals().items() if k not in ("path", "weights")}
    path = Path(path)
    if weights != "F32":
        f32 = write_model(path.with_suffix(".f32.gguf"), **args)
        quantize(f32, path, weights)
        f32.unlink()
        return path
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}")
    if biases and arch not in BIASES:
        raise ValueError(f"llama.cpp's {arch} graph has no biases to write")
    if not tied and arch == "gemma2":
        raise ValueError("llama.cpp's gemma2 graph loads no output.weight (it would refuse the file)")

    rng = np.random.default_rng(seed)
    hd = head_dim or n_embd // n_head
    fused = arch == "phi3" if fused_qkv is None else fused_qkv

    def matrix(rows: int, cols: int, gain: float) -> np.ndarray:
        # (rows, cols) numpy = GGUF shape (cols, rows): y = x @ w.T
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(n: int, gain: float = 1.0) -> np.ndarray:
        return (gain * (1.0 + 0.2 * rng.standard_normal(n))).astype(np.float32)

    w = GGUFWriter(str(path), arch)
    w.add_context_length(context)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(rope_dims or hd)
    w.add_rope_freq_base(base)
    w.add_layer_norm_rms_eps(1e-6 if arch.startswith("gemma") else 1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("none")  # llama.cpp then makes n_vocab placeholder tokens
    if scaling_type is not None:
        w.add_rope_scaling_type(SCALING_TYPES[scaling_type])
    if factor is not None:
        w.add_rope_scaling_factor(factor)
    if original_context is not None:
        w.add_rope_scaling_orig_ctx_len(original_context)
    if attn_factor is not None:
        w.add_rope_scaling_attn_factors(attn_factor)
    if sliding_window is not None:
        w.add_sliding_window(sliding_window)
    if window_pattern is not None:
        w.add_sliding_window_pattern(window_pattern)
    if base_swa is not None:
        w.add_rope_freq_base_swa(base_swa)
    if softcap is not None:
        w.add_final_logit_softcapping(softcap)
    if attn_softcap is not None:
        w.add_attn_logit_softcapping(attn_softcap)

    # rows of norm ~3: tied logits with a spread of a few units. Gemma's graph multiplies them by
    # sqrt(n_embd): stored smaller, the residual stream starts as llama's does; tied logits then
    # want the output norm's gain sqrt(n_embd) larger for their spread (gemma2, always tied), or
    # an output matrix (gemma3: tied=False)
    gemma = arch in ("gemma2", "gemma3")
    embd = 0.2 * rng.standard_normal((n_vocab, n_embd)) / (np.sqrt(n_embd) if gemma else 1.0)
    w.add_tensor("token_embd.weight", embd.astype(np.float32))
    qk_norm = arch in ("qwen3", "gemma3")
    for i in range(n_layer):
        blk = f"blk.{i}."
        w.add_tensor(blk + "attn_norm.weight", norm(n_embd))
        # query and key gains of 2.5 (or q/k norms of 2.5) give attention logits with a spread
        # of a few units
        q = matrix(n_head * hd, n_embd, 2.5)
        k = matrix(n_head_kv * hd, n_embd, 2.5)
        v = matrix(n_head_kv * hd, n_embd, 1.0)
        if fused:
            w.add_tensor(blk + "attn_qkv.weight", np.concatenate([q, k, v]))
        else:
            w.add_tensor(blk + "attn_q.weight", q)
            w.add_tensor(blk + "attn_k.weight", k)
            w.add_tensor(blk + "attn_v.weight", v)
        if qk_norm:
            w.add_tensor(blk + "attn_q_norm.weight", norm(hd, 2.5))
            w.add_tensor(blk + "attn_k_norm.weight", norm(hd, 2.5))
        w.add_tensor(blk + "attn_output.weight", matrix(n_embd, n_head * hd, 0.5))
        if gemma:
            w.add_tensor(blk + "post_attention_norm.weight", norm(n_embd))
        w.add_tensor(blk + "ffn_norm.weight", norm(n_embd))
        if arch == "phi3":  # gate and up stacked in one matrix
            w.add_tensor(blk + "ffn_up.weight", matrix(2 * n_ff, n_embd, 1.0))
        else:
            w.add_tensor(blk + "ffn_gate.weight", matrix(n_ff, n_embd, 1.0))
            w.add_tensor(blk + "ffn_up.weight", matrix(n_ff, n_embd, 1.0))
        w.add_tensor(blk + "ffn_down.weight", matrix(n_embd, n_ff, 0.5))
        if gemma:
            w.add_tensor(blk + "post_ffw_norm.weight", norm(n_embd))
        if biases:
            sizes = {"attn_q": n_head * hd, "attn_k": n_head_kv * hd, "attn_v": n_head_kv * hd,
                     "attn_output": n_embd, "ffn_up": n_ff, "ffn_gate": n_ff, "ffn_down": n_embd}
            for name in BIASES[arch]:
                w.add_tensor(blk + name + ".bias", (0.1 * rng.standard_normal(sizes[name])).astype(np.float32))
    w.add_tensor("output_norm.weight", norm(n_embd, np.sqrt(n_embd) if gemma and tied else 1.0))
    if not tied:
        w.add_tensor("output.weight", matrix(n_vocab, n_embd, 3.0))
    if freq_factors is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(freq_factors, dtype=np.float32))
    if long_factors is not None:
        w.add_tensor("rope_factors_long.weight", np.asarray(long_factors, dtype=np.float32))
    if short_factors is not None:
        w.add_tensor("rope_factors_short.weight", np.asarray(short_factors, dtype=np.float32))
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
