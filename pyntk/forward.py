"""A numpy forward pass of a llama-architecture GGUF model: the reference `pyntk verify` checks
llama.cpp against.

It shares no code with ggml: weights are dequantized by gguf-py's numpy code (exactly, to
float32), the matrix products run in float32, everything between them (norms, rotary embedding,
attention, softmax, SwiGLU) in float64, and the rotary frequencies come from pyntk.reference.
The network is llama.cpp's graph for LLM_ARCH_LLAMA (src/models/llama.cpp): RMSNorm,
grouped-query attention with RoPE in NORMAL mode, a SwiGLU feed-forward, a final RMSNorm and the
output matrix (or the token embeddings, when tied).

Tokens can sit at any positions and see any subset of each other (``visible``), which lets a
handful of tokens be thousands of positions apart: RoPE only depends on the distance between a
query and a key, so that distance is what makes a scaling visible in the logits.

``ggml_rounding=True`` applies llama.cpp's two departures from exact arithmetic: it rounds the
input of every matrix product the way ggml's CPU backend does before multiplying it with a weight
of that type (8-bit blocks for quantized weights, half precision for F16/BF16 ones), and shifts
every rotary angle by a random amount within the error of ggml's float32 angles. It does not make
the reference more right; it measures how far those errors move the logits, which is how much
llama.cpp may differ from the exact result.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import numpy as np
from gguf import GGMLQuantizationType, Keys, quants

from .errors import PyntkError
from .gguf_edit import RopeInfo, read_rope
from .gguf_file import GGUFFile
from .reference import inv_freq
from .scaling import RopeScaling

# llama.cpp's rope mode per architecture (llama_model_rope_type). NORMAL rotates adjacent pairs
# (x[2i], x[2i+1]); the GGUF converter permutes the rows of attn_q/attn_k so that this matches the
# half-split rotation of the Hugging Face checkpoint, so the stored weights are used as they are.
ROPE_MODES = {"llama": "normal"}

_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")

MEMORY_SHARE = 0.5  # refuse models whose float32 weights would take more of the RAM than this


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


@dataclass(frozen=True)
class Matrix:
    values: np.ndarray  # float32 (rows, columns), used as y = x @ values.T
    rounding: Optional[str]  # input_rounding of the stored type
    bias: Optional[np.ndarray] = None

    def __call__(self, x: np.ndarray, ggml_rounding: bool = False) -> np.ndarray:
        if ggml_rounding:
            x = round_input(x, self.rounding)
        # float32 products: twice as fast as float64 and as exact as llama.cpp's own F32 path
        y = (x.astype(np.float32) @ self.values.T).astype(np.float64)
        return y if self.bias is None else y + self.bias


class Model:
    """A llama-architecture GGUF model in numpy; get one with :func:`load`."""

    def __init__(self, path: str, rope: RopeInfo, hparams: dict, tensors: dict) -> None:
        self.path = path
        self.rope = rope
        self.n_layer = hparams["n_layer"]
        self.n_head = hparams["n_head"]
        self.n_head_kv = hparams["n_head_kv"]
        self.head_dim = hparams["head_dim"]
        self.eps = hparams["eps"]
        tensors = dict(tensors)

        def take(name: str) -> tuple:
            if name not in tensors:
                raise PyntkError(f"{path}: tensor {name!r} is missing; llama.cpp cannot load this file "
                                 f"either")
            return tensors.pop(name)

        def matrix(name: str) -> Matrix:
            values, type_ = take(f"{name}.weight")
            bias = tensors.pop(f"{name}.bias", (None,))[0]
            return Matrix(values, input_rounding(type_), bias)

        embeddings, embeddings_type = take("token_embd.weight")
        self.tok_embd = embeddings
        self.n_vocab = embeddings.shape[0]
        if "output.weight" in tensors:
            self.output = matrix("output")
        else:  # llama.cpp multiplies by the token embeddings when there is no output matrix
            self.output = Matrix(embeddings, input_rounding(embeddings_type))
        self.output_norm = take("output_norm.weight")[0]
        # Llama 3.x files carry per-pair divisors of the angles (llama.cpp's rope_factors)
        self.freq_factors = tensors.pop("rope_freqs.weight", (None,))[0]
        self.layers: List[Dict[str, object]] = []
        for i in range(self.n_layer):
            blk = f"blk.{i}."
            layer = {n: take(blk + n + ".weight")[0] for n in ("attn_norm", "ffn_norm")}
            layer.update({n: matrix(blk + n) for n in _MATRICES})
            self.layers.append(layer)
        if tensors:
            # Refuse rather than silently compute a different network than llama.cpp does.
            raise PyntkError(f"{path}: tensors {', '.join(sorted(tensors)[:4])} are not part of the "
                             f"plain llama network pyntk's reference computes (mixture of experts, "
                             f"fused QKV, scale tensors ...); verify a plain llama-architecture model")

    def rope_tables(self, scaling: RopeScaling, positions: np.ndarray, ggml_rounding: bool = False):
        """cos and sin (tokens, dims/2) in float64, YaRN's temperature already multiplied in."""
        if scaling.dims != self.head_dim:
            raise PyntkError(f"the scaling rotates {scaling.dims} dims but {self.path} has heads of "
                             f"{self.head_dim} (llama.cpp's llama graph rotates whole heads)")
        # Dynamic NTK follows the sequence length, which is the last position + 1.
        inv, temperature = inv_freq(scaling, seq_len=int(positions.max()) + 1)
        if self.freq_factors is not None:
            inv = inv / self.freq_factors
        angles = positions[:, None].astype(np.float64) * inv[None, :]
        if ggml_rounding:
            error = float32_angle_error(scaling, positions)
            angles += error * np.random.default_rng(0).uniform(-1.0, 1.0, angles.shape)
        return np.cos(angles) * temperature, np.sin(angles) * temperature

    def logits(self, tokens, positions, scaling: Optional[RopeScaling] = None,
               visible: Optional[np.ndarray] = None, *, rows=None,
               ggml_rounding: bool = False) -> np.ndarray:
        """Logits (rows, vocab) in float64 for ``tokens`` at ``positions``.

        scaling        the RoPE scaling to apply; default: the file's, as llama.cpp applies it
        visible        boolean (tokens, tokens): visible[i, j] means token i attends to token j;
                       default: llama.cpp's causal mask, which compares positions
        rows           indices of the tokens whose logits are wanted; default: all
        ggml_rounding  round each matrix product's input as ggml's CPU backend does (see above)
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        n = len(tokens)
        if tokens.ndim != 1 or positions.shape != tokens.shape or n == 0:
            raise ValueError("tokens and positions must be non-empty 1-D sequences of the same length")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ValueError(f"token ids must be from 0 to {self.n_vocab - 1}")
        if positions.min() < 0:
            raise ValueError("positions must be >= 0")
        if visible is None:
            visible = positions[None, :] <= positions[:, None]
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != (n, n) or not visible.diagonal().all():
            raise ValueError(f"visible must be a ({n}, {n}) boolean matrix with a true diagonal "
                             f"(every token sees itself)")
        with _one_blas_thread():
            return self._logits(tokens, positions, scaling or self.rope.scaling(), visible,
                                rows, ggml_rounding)

    def _logits(self, tokens, positions, scaling, visible, rows, ggml_rounding) -> np.ndarray:
        n = len(tokens)
        cos, sin = self.rope_tables(scaling, positions, ggml_rounding)
        mask = np.where(visible, 0.0, -np.inf)
        group = self.n_head // self.n_head_kv
        scale = 1.0 / np.sqrt(self.head_dim)
        r = ggml_rounding

        x = self.tok_embd[tokens].astype(np.float64)
        for layer in self.layers:
            h = _rms_norm(x, layer["attn_norm"], self.eps)
            q = _rotate(layer["attn_q"](h, r).reshape(n, self.n_head, self.head_dim), cos, sin)
            k = _rotate(layer["attn_k"](h, r).reshape(n, self.n_head_kv, self.head_dim), cos, sin)
            v = layer["attn_v"](h, r).reshape(n, self.n_head_kv, self.head_dim)
            # query head h reads key/value head h // group, as ggml's broadcasting mul_mat does;
            # heads first: (heads, tokens, dims)
            q = q.transpose(1, 0, 2)
            k = np.repeat(k, group, axis=1).transpose(1, 2, 0)
            v = np.repeat(v, group, axis=1).transpose(1, 0, 2)
            scores = q @ k * scale + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attn = (scores @ v).transpose(1, 0, 2).reshape(n, self.n_head * self.head_dim)
            x = x + layer["attn_output"](attn, r)

            h = _rms_norm(x, layer["ffn_norm"], self.eps)
            gate = layer["ffn_gate"](h, r)
            x = x + layer["ffn_down"](gate / (1.0 + np.exp(-gate)) * layer["ffn_up"](h, r), r)
        x = x if rows is None else x[np.asarray(rows)]
        return self.output(_rms_norm(x, self.output_norm, self.eps), r)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
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


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """NORMAL-mode RoPE of x (tokens, heads, dims): pair i is (x[2i], x[2i+1])."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def load(path) -> Model:
    """The model at ``path``, dequantized once per process (cached by path, size and mtime)."""
    path = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PyntkError(f"{path}: no such file; check the path") from None
    return _load(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int) -> Model:
    del size, mtime_ns  # part of the cache key only: an edited file is loaded again
    gguf = GGUFFile(path)
    rope = read_rope(gguf)
    if rope.arch not in ROPE_MODES:
        raise PyntkError(f"{path}: architecture {rope.arch!r} is not supported by pyntk's reference "
                         f"forward pass (supported: {', '.join(ROPE_MODES)})")
    hparams = _hparams(gguf, rope)
    n_values = sum(int(np.prod(t.shape)) for t in gguf.tensors)
    try:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_SHARE
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): do not guess
        budget = float("inf")
    if n_values * 4 > budget:
        raise PyntkError(f"{path}: its weights need {n_values * 4 / 2**30:.1f} GiB as float32, more than "
                         f"this machine can spare; verify a smaller model with the same rope settings")
    data = np.memmap(path, dtype=np.uint8, mode="r")

    def dequantize(t):
        raw = data[gguf.data_offset + t.offset: gguf.data_offset + t.offset + t.nbytes]
        rows = int(np.prod(t.shape[1:]))
        try:
            values = quants.dequantize(raw.reshape(rows, -1), t.type)
        except NotImplementedError:
            raise PyntkError(f"{path}: tensor {t.name!r} is {t.type.name}, which the gguf package cannot "
                             f"dequantize; verify a copy quantized to Q8_0, Q4_K, Q6_K ...") from None
        shape = (rows, t.shape[0]) if len(t.shape) > 1 else (t.shape[0],)
        # a copy: F32 dequantizes to a view of the memory map, which must not outlive the file
        return t.name, (np.array(values.reshape(shape), dtype=np.float32), t.type)

    # numpy releases the GIL inside its loops, so tensors dequantize in parallel
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        tensors = dict(pool.map(dequantize, gguf.tensors))
    return Model(path, rope, hparams, tensors)


def _hparams(gguf: GGUFFile, rope: RopeInfo) -> dict:
    arch, path = rope.arch, gguf.path

    def get(template: str, default=None):
        name = template.format(arch=arch)
        value = gguf.value(name, default)
        if value is None:
            raise PyntkError(f"{path}: {name} is missing; llama.cpp cannot load this file either")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise PyntkError(f"{path}: {name} is {value!r}; pyntk's reference handles one value for "
                             f"all layers only")
        return value

    n_embd = get(Keys.LLM.EMBEDDING_LENGTH)
    n_head = get(Keys.Attention.HEAD_COUNT)
    n_head_kv = get(Keys.Attention.HEAD_COUNT_KV, n_head)
    if get(Keys.LLM.EXPERT_COUNT, 0):
        raise PyntkError(f"{path}: is a mixture of experts, which pyntk's reference does not compute; "
                         f"verify a dense llama model")
    if not n_head or not n_head_kv or n_head % n_head_kv:
        raise PyntkError(f"{path}: {n_head} attention heads cannot share {n_head_kv} key/value heads")
    head_dim = get(Keys.Attention.KEY_LENGTH, n_embd // n_head)
    value_dim = get(Keys.Attention.VALUE_LENGTH, head_dim)
    if value_dim != head_dim or rope.dims != head_dim:
        raise PyntkError(f"{path}: llama.cpp's llama graph needs equal key, value and rotary sizes "
                         f"(got {head_dim}, {value_dim}, {rope.dims})")
    return dict(n_layer=get(Keys.LLM.BLOCK_COUNT), n_head=n_head, n_head_kv=n_head_kv,
                head_dim=head_dim, eps=float(get(Keys.Attention.LAYERNORM_RMS_EPS)))
