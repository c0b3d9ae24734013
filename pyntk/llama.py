"""llama-cpp-python bridge: run a GGUF model in llama.cpp with the file's RoPE settings or a
RopeScaling override, and read the logits of tokens decoded at explicit positions.

It uses llama-cpp-python's low-level API (llama_batch_init / llama_decode / llama_get_logits_ith)
because the high-level ``Llama`` class numbers positions itself. The KV cache is float32 and
flash attention is off, so attention runs in float32 and the only rounding beyond float32 is
the one llama.cpp's matrix products do by design (see docs/VERIFY.md).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional, Sequence

import numpy as np

from .errors import PyntkError
from .gguf_edit import LLAMA_CPP_TYPES, RopeInfo, read_rope
from .scaling import RopeScaling

# enum llama_rope_scaling_type in llama.h
_QUIET = None


def llama_kwargs(scaling: RopeScaling, info: RopeInfo) -> dict:
    """llama-cpp-python ``Llama(...)`` keyword arguments that make llama.cpp apply ``scaling`` to
    the model described by ``info``, whatever rope settings the file itself carries."""
    s = scaling
    kw: dict = {"rope_freq_base": s.base, "rope_freq_scale": 1.0, "yarn_ext_factor": 0.0}
    attention = 1.0
    if s.method == "none":
        kw["rope_scaling_type"] = LLAMA_CPP_TYPES.index("none")
    elif s.method == "linear":
        kw.update(rope_scaling_type=LLAMA_CPP_TYPES.index("linear"), rope_freq_scale=1.0 / s.factor)
    elif s.method == "ntk":
        # static NTK is only a larger base to llama.cpp
        kw.update(rope_scaling_type=LLAMA_CPP_TYPES.index("none"), rope_freq_base=s.ntk_base)
    elif s.method in ("yarn", "ntk-by-parts"):
        kw.update(rope_scaling_type=LLAMA_CPP_TYPES.index("yarn"), rope_freq_scale=1.0 / s.factor,
                  yarn_ext_factor=1.0, yarn_orig_ctx=s.original_context,
                  yarn_beta_fast=s.beta_fast, yarn_beta_slow=s.beta_slow)
        # llama.cpp always applies YaRN's temperature 0.1*ln(s)+1 and multiplies it by the file's
        # rope.scaling.attn_factor; NTK-by-parts is YaRN with that product equal to 1.
        attention = s.attn_factor if s.method == "yarn" else 1.0 / (0.1 * math.log(s.factor) + 1.0)
    else:
        raise PyntkError(f"llama.cpp has no runtime setting for {s.method!r}; it applies none, linear, "
                         f"ntk (as a base), yarn and ntk-by-parts")
    # llama.cpp multiplies cos and sin by rope.scaling.attn_factor whatever the scaling type
    if attention != info.attn_factor:
        kw["kv_overrides"] = {f"{info.arch}.rope.scaling.attn_factor": float(attention)}
    return kw


@functools.lru_cache(maxsize=1)
def _lib():
    try:
        import llama_cpp
    except ImportError:
        raise PyntkError("llama-cpp-python is not installed; install it with "
                         "`pip install 'pyntk[llama]'`") from None
    llama_cpp.llama_backend_init()
    if not os.environ.get("PYNTK_DEBUG"):
        # llama.cpp logs every load to stderr; the callback must outlive the library
        global _QUIET
        _QUIET = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_QUIET, None)
    return llama_cpp


class _Model:
    """A loaded llama_model, freed once neither the cache below nor a session holds it."""

    def __init__(self, path: str, kv_overrides: tuple) -> None:
        lib = _lib()
        params = lib.llama_model_default_params()
        if kv_overrides:
            self._overrides = (lib.llama_model_kv_override * (len(kv_overrides) + 1))()
            for item, (key, value) in zip(self._overrides, kv_overrides):
                item.key = key.encode()
                item.tag = lib.LLAMA_KV_OVERRIDE_TYPE_FLOAT
                item.value.val_f64 = value
            params.kv_overrides = self._overrides
        self.lib = lib
        self.ptr = lib.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            raise PyntkError(f"{path}: llama.cpp could not load this model (run with PYNTK_DEBUG=1 "
                             f"to see its log)")
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.llama_model_free(self.ptr)


@functools.lru_cache(maxsize=2)
def _model(path: str, size: int, mtime_ns: int, kv_overrides: tuple) -> _Model:
    del size, mtime_ns  # cache key only
    return _Model(path, kv_overrides)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Session:
    """One llama.cpp context over a GGUF model: decode tokens at explicit positions, read logits.

    scaling  the RoPE scaling llama.cpp applies; None keeps the file's own settings
    n_ctx    KV cache cells: the number of tokens decoded before clear(), not the largest position
    n_seq    sequences (seq ids 0 .. n_seq-1); they share one cache, so copy_sequence is cheap
    """

    def __init__(self, path, scaling: Optional[RopeScaling] = None, *, n_ctx: int = 512,
                 n_seq: int = 1, threads: Optional[int] = None) -> None:
        self.path = os.path.realpath(os.fspath(path))
        self.info = read_rope(self.path)
        kw = llama_kwargs(scaling, self.info) if scaling is not None else {}
        st = os.stat(self.path)
        self.model = _model(self.path, st.st_size, st.st_mtime_ns,
                            tuple(sorted(kw.pop("kv_overrides", {}).items())))
        lib = self.lib = self.model.lib
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = n_seq
        params.kv_unified = True  # one cell pool: copying a sequence only tags its cells
        params.type_k = params.type_v = lib.GGML_TYPE_F32
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads = params.n_threads_batch = threads or _cores()
        for name, value in kw.items():
            setattr(params, name, value)
        self.ctx = lib.llama_init_from_model(self.model.ptr, params)
        if not self.ctx:
            raise PyntkError(f"{self.path}: llama.cpp could not create a context with {n_ctx} cells; "
                             f"use fewer tokens")
        self.n_vocab = self.model.n_vocab

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seq=0) -> np.ndarray:
        """Decode tokens at positions; their logits (tokens, vocab) as float32.

        seq is the sequence id of every token, or one id per token. llama.cpp wants each
        sequence's positions in one call to be consecutive, and to continue from the last
        position the sequence already holds (an empty sequence may start anywhere).
        """
        lib, n = self.lib, len(tokens)
        seqs = [seq] * n if np.ndim(seq) == 0 else list(seq)
        if n == 0 or len(positions) != n or len(seqs) != n:
            raise ValueError("tokens, positions and seq must be non-empty and of the same length")
        batch = lib.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, (token, pos, s) in enumerate(zip(tokens, positions, seqs)):
                batch.token[i], batch.pos[i] = int(token), int(pos)
                batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, int(s), True
            code = lib.llama_decode(self.ctx, batch)
        finally:
            lib.llama_batch_free(batch)
        if code != 0:
            raise PyntkError(f"llama.cpp refused to decode {n} tokens at positions {positions[0]}.. "
                             f"(code {code}); run with PYNTK_DEBUG=1 to see why")
        out = np.empty((n, self.n_vocab), dtype=np.float32)
        for i in range(n):
            out[i] = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        return out

    def copy_sequence(self, src: int, dst: int) -> None:
        """Let sequence ``dst`` see every token of ``src`` too (at their positions)."""
        self.lib.llama_memory_seq_cp(self.lib.llama_get_memory(self.ctx), src, dst, -1, -1)

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
