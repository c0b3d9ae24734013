"""Numpy forward passes of GGUF models: the reference `pyntk verify` checks llama.cpp against.

It shares no code with ggml: weights are dequantized by gguf-py's numpy code (exactly, to
float32), the matrix products run in float32, everything between them (norms, rotary embedding,
attention, softmax, the feed-forward's activation) in float64, and the rotary frequencies come
from pyntk.reference. The networks are llama.cpp's graphs for llama (Llama 1-3.x, Mistral 7B,
SmolLM2 ...), qwen2, qwen3, gemma2, gemma3 and phi3 (graphs.py); each layer's rope (sliding-window
layers, rope_freqs and LongRoPE factors, NORMAL or NEOX mode) follows the llama.cpp contract,
pyntk.llamacpp. Weights are read from the file layer by layer (model.py), so any model size runs
in about one layer's memory.

Tokens can sit at any positions and see any subset of each other (``visible``), which lets a
handful of tokens be thousands of positions apart: RoPE only depends on the distance between a
query and a key, so that distance is what makes a scaling visible in the logits.

``ggml_rounding=True`` applies llama.cpp's departures from exact arithmetic: it rounds the input
of every matrix product the way ggml's CPU backend does before multiplying it with a weight of
that type (8-bit blocks for quantized weights, half precision for F16/BF16 ones), looks GELU up
in ggml's half-precision table, and shifts every rotary angle by a random amount within the
error of ggml's float32 angles. It does not make the reference more right; it measures how far
those errors move the logits, which is how much llama.cpp may differ from the exact result.
"""

from .model import ARCHS, Model, load
from .numerics import float32_angle_error, input_rounding, one_blas_thread, round_input

__all__ = ["ARCHS", "Model", "float32_angle_error", "input_rounding", "load", "one_blas_thread",
           "round_input"]
