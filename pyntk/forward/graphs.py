"""The networks the reference computes: one entry per architecture, read from llama.cpp's graph
for it (``vendor/llama.cpp/src/models/ARCH.cpp`` in llama-cpp-python 0.3.36: load_arch_tensors
for the tensors, the graph constructor for the arithmetic): llama, qwen2, qwen3, gemma2, gemma3,
phi3. What differs between them is small enough to be a handful of switches on one decoder block
(model.py):

    x = embedding rows (times sqrt(n_embd) for Gemma)
    per layer:  h = RMSNorm(x); q, k, v = h @ Wq, Wk, Wv (+ biases; or one fused Wqkv)
                [q, k = RMSNorm per head]; q, k = RoPE(q), RoPE(k)   (the layer's own rope)
                a = attention(q * scale, k, v [scores soft-capped]) @ Wo (+ bias)
                [a = RMSNorm(a)]; x = x + a
                h = RMSNorm(x); f = ffn(h)                      [f = RMSNorm(f)]; x = x + f
    logits = RMSNorm(x) @ Woutput (or the token embeddings) (+ bias) [soft-capped]

The rope of each layer (window or global, base, scale, factor tensors, NORMAL or NEOX mode) is
not here: it comes from the llama.cpp contract (pyntk.llamacpp), like every rope rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from gguf import Keys

from ..llamacpp import LONGROPE, ROPE_FREQS

# optional per-layer tensors every graph built on create_tensor_qkv accepts (model.cpp)
QKV_BIASES = ("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_qkv.bias")


@dataclass(frozen=True)
class Graph:
    arch: str
    ffn: str  # "silu": silu(gate) * up; "gelu": gelu(gate) * up (LLM_FFN_PAR);
    #           "swiglu": ffn_up holds [gate; up] stacked, silu(first half) * second (phi3)
    attn_scale: Callable[[dict], float]  # what q.k is multiplied by before the softmax
    qk_norm: bool = False  # RMSNorm of each head of q and k before RoPE (attn_q_norm, attn_k_norm)
    post_norms: bool = False  # RMSNorm of the attention and feed-forward outputs (Gemma)
    embed_scale: bool = False  # token embeddings times sqrt(n_embd) (Gemma)
    optional: Tuple[str, ...] = QKV_BIASES  # per-layer tensors the file may have
    output: bool = True  # output.weight is loaded when present (else the token embeddings are)
    output_bias: bool = False  # output.bias may follow the output matrix
    # soft-capping, c * tanh(s / c) for c != 0: (key, c when the key is absent)
    final_softcap: Tuple[str, float] = ("", 0.0)  # of the logits
    attn_softcap: Tuple[str, float] = ("", 0.0)  # of the scaled q.k scores, before the mask
    factor_tensors: Tuple[str, ...] = ()  # per-pair rope divisors the graph loads (which one
    #                                       applies is the llama.cpp contract's rule)


def _head(hp: dict) -> float:
    return 1.0 / math.sqrt(hp["head_dim"])


def _gemma_scale(layers_27b: int) -> Callable[[dict], float]:
    # models/gemma2.cpp, gemma3.cpp load_arch_hparams, f_attention_scale: the 27B model (46 layers
    # in Gemma 2, 62 in Gemma 3) scales by n_embd / n_head, every other size by the key length
    # (query_pre_attn_scalar in the original configs)
    def scale(hp: dict) -> float:
        if hp["n_layer"] == layers_27b:
            return 1.0 / math.sqrt(hp["n_embd"] // hp["n_head"])
        return _head(hp)
    return scale


GRAPHS: Dict[str, Graph] = {g.arch: g for g in (
    # models/llama.cpp: kq_scale 1/sqrt(head) (f_attention_scale is not read for llama); optional
    # biases on the output projection and the feed-forward; rope_freqs or LongRoPE factor tensors
    Graph("llama", "silu", _head, optional=QKV_BIASES + (
        "attn_output.bias", "ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"),
          factor_tensors=(ROPE_FREQS,) + LONGROPE),
    # models/qwen2.cpp: as llama; q/k/v biases (optional), an optional output bias
    Graph("qwen2", "silu", _head, output_bias=True),
    # models/qwen3.cpp: q/k RMSNorm per head before RoPE, no biases but the generic optional ones
    Graph("qwen3", "silu", _head, qk_norm=True),
    # models/gemma2.cpp: embeddings scaled, post-attention and post-FFN norms, GELU (LLM_FFN_GELU,
    # LLM_FFN_PAR), q scaled by f_attention_scale (kq_scale 1), the scores soft-capped
    # (hparams.attn_soft_cap; llama-graph.cpp build_attn_mha), the token embeddings as the output
    # matrix (an output.weight would be a tensor llama.cpp refuses), the logits soft-capped always;
    # both caps default to llama-hparams.h's 50 and 30
    Graph("gemma2", "gelu", _gemma_scale(46), post_norms=True, embed_scale=True, output=False,
          final_softcap=(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, 30.0),
          attn_softcap=(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, 50.0)),
    # models/gemma3.cpp: as gemma2 but q/k norms, an optional output matrix, no score cap, and the
    # final soft-capping only when the file sets it (f_final_logit_softcapping = 0 first)
    Graph("gemma3", "gelu", _gemma_scale(62), qk_norm=True, post_norms=True, embed_scale=True,
          final_softcap=(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, 0.0)),
    # models/phi3.cpp: fused attn_qkv (or separate), LLM_FFN_SWIGLU over ffn_up's two halves,
    # q scaled by 1/sqrt(head), an optional output bias, LongRoPE factor tensors
    Graph("phi3", "swiglu", _head, output_bias=True, factor_tensors=LONGROPE),
)}
