"""The arithmetic of the reference network: exact float64 formulas, and llama.cpp's departures
from them (what ``ggml_rounding`` applies), each as ggml's CPU backend computes it."""

from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
from gguf import GGMLQuantizationType

from ..scaling import RopeScaling


def input_rounding(weight_type: GGMLQuantizationType) -> Optional[str]:
    """What ggml's CPU backend turns a float32 input into before a product with this weight type
    (its ``vec_dot_type``, ggml-cpu.c): None for float32 weights."""
    name = weight_type.name
    if name == "F32":
        return None
    if name in ("F16", "BF16"):
        return name
    if name in ("Q4_1", "Q5_1"):
        return "Q8_1"
    if name in ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4", "NVFP4"):
        return "Q8_0"
    return "Q8_K"  # the K-quants, the other i-quants and the ternary types


def float32_angle_error(scaling: RopeScaling, positions: np.ndarray) -> np.ndarray:
    """How far ggml's float32 rotary angles may be off, in radians, per (token, pair).

    ggml forms theta_i = p * theta_scale^i by i float32 multiplications, so pair i's angle is off
    by up to ~(2i + 8) roundings of the unscaled angle p * b^(-2i/d); cosf/sinf and YaRN's mix
    add a few roundings more.
    """
    i = np.arange(scaling.dims // 2)
    theta = np.asarray(positions, dtype=np.float64)[:, None] * scaling.base ** (-2.0 * i / scaling.dims)
    return (theta * (2 * i + 8) + 8) * 2.0 ** -24


def round_input(x: np.ndarray, rounding: Optional[str]) -> np.ndarray:
    """x (tokens, columns) rounded as ggml's from_float for ``rounding`` does, back in float64."""
    if rounding is None:
        return x
    x32 = x.astype(np.float32)
    if rounding == "F16":
        return x32.astype(np.float16).astype(np.float64)
    if rounding == "BF16":  # ggml_compute_fp32_to_bf16: round to nearest even
        bits = x32.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    # quantize_row_q8_0/q8_1: blocks of 32, scale amax/127 stored as f16. Q8_1 also keeps each
    # block's sum (as f16) for the weights' offsets; that rounding is not modelled.
    if rounding in ("Q8_0", "Q8_1"):
        blocks = x32.reshape(len(x), -1, 32)
        amax = np.abs(blocks).max(axis=-1, keepdims=True)
        with np.errstate(divide="ignore"):
            inverse = np.where(amax > 0, np.float32(127) / amax, np.float32(0))
        q = np.rint(blocks * inverse)
        scale = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
        return (q * scale).reshape(x.shape)
    # Q8_K, quantize_row_q8_K_ref: blocks of 256, the signed extreme maps to -127, scale in f32
    blocks = x32.reshape(len(x), -1, 256)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
    with np.errstate(divide="ignore"):
        inverse = np.where(extreme != 0, np.float32(-127) / extreme, np.float32(0))
    q = np.minimum(np.rint(blocks * inverse), 127)
    with np.errstate(divide="ignore"):
        scale = np.where(inverse != 0, np.float32(1) / inverse, np.float32(0)).astype(np.float64)
    return (q * scale).reshape(x.shape)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (llama.cpp's LLM_NORM_RMS: ggml_rms_norm, then times weight)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu(x: np.ndarray, ggml_rounding: bool = False) -> np.ndarray:
    """GELU, tanh approximation (ggml_gelu_f32). ggml's CPU backend looks it up in a table
    (GGML_GELU_FP16, vec.h ggml_vec_geglu_f32): the input rounded to float16 for |x| < 10, the
    entry ggml_gelu_f32 of that value in float32 arithmetic, rounded to float16; x itself from 10
    up, 0 from -10 down. ``ggml_rounding`` applies that."""
    if not ggml_rounding:
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * x * (1.0 + 0.044715 * x * x)))
    table = _gelu_table()[np.clip(x, -10, 10).astype(np.float16).view(np.uint16)]
    return np.where(x >= 10, x, np.where(x <= -10, 0.0, table))


@functools.lru_cache(maxsize=1)
def _gelu_table() -> np.ndarray:
    """ggml_table_gelu_f16 (ggml-cpu.c): every float16 value's GELU, computed in float32 as ggml
    does (cancellation in 1 + tanh included), stored as float16; back in float64."""
    with np.errstate(all="ignore"):  # NaN and infinity entries, never looked up
        x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
        one, half = np.float32(1), np.float32(0.5)
        y = half * x * (one + np.tanh(np.float32(0.79788456080286535587989211986876) * x
                                      * (one + np.float32(0.044715) * x * x)))
    return y.astype(np.float16).astype(np.float64)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mode: str) -> np.ndarray:
    """RoPE of x (tokens, heads, head size) with cos/sin (tokens, pairs): the first 2*pairs
    dimensions rotate, the rest are copied (ggml_rope_ext). NORMAL pairs (x[2i], x[2i+1]), NEOX
    pairs (x[i], x[i + pairs])."""
    half = cos.shape[-1]
    if mode == "normal":
        a, b = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    elif mode == "neox":
        a, b = x[..., :half], x[..., half:2 * half]
    else:
        raise ValueError(f"rope mode must be 'normal' or 'neox', got {mode!r}")
    c, s = cos[:, None, :], sin[:, None, :]
    out = x.copy()
    if mode == "normal":
        out[..., 0:2 * half:2], out[..., 1:2 * half:2] = a * c - b * s, a * s + b * c
    else:
        out[..., :half], out[..., half:2 * half] = a * c - b * s, a * s + b * c
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float,
              softcap: float = 0.0) -> np.ndarray:
    """Softmax attention of q (tokens, heads, d) over k, v (tokens, kv heads, d); mask is 0 or
    -inf (tokens, tokens). Query head h reads key/value head h // group, as ggml's broadcasting
    mul_mat does. ``softcap`` c != 0 caps the scaled scores s to c * tanh(s / c) before the mask
    (llama-graph.cpp build_attn_mha, hparams.attn_soft_cap). Returns (tokens, heads * d_v)."""
    n, heads, _ = q.shape
    group = heads // k.shape[1]
    q = q.transpose(1, 0, 2)  # heads first: (heads, tokens, dims)
    k = np.repeat(k, group, axis=1).transpose(1, 2, 0)
    v = np.repeat(v, group, axis=1).transpose(1, 0, 2)
    scores = q @ k * scale
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    scores = scores + mask
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    return (scores @ v).transpose(1, 0, 2).reshape(n, -1)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with OpenBLAS on one thread, where it can be told so.

    OpenBLAS's threads spin between calls; for products of a hundred rows they cost more than
    they bring, and many times that on a busy machine (the SmolLM2 verify tests: 108 s with two
    threads, 22 s with one). numpy has no switch for it, so OpenBLAS's own is called, found among
    the libraries loaded into the process (Linux; elsewhere nothing changes).
    """
    calls = []
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("openblas", ""), ("scipy_openblas", "64_"), ("openblas", "64_")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                calls.append((set_, get()))
                set_(1)
                break
    try:
        yield
    finally:
        for set_, threads in calls:
            set_(threads)
