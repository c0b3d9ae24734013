"""llama-cpp-python bridge: run a GGUF model in llama.cpp with the file's RoPE settings or a
RopeScaling override.

- :class:`Session` decodes tokens at explicit positions and returns every logit (pyntk verify);
- :class:`Model` and its :class:`Context` stream: logits only for the rows asked for, batch by
  batch (pyntk ppl, and the contexts pyntk.dynamic chooses per request).

It uses llama-cpp-python's low-level API (llama_batch_init / llama_decode / llama_get_logits_ith)
because the high-level ``Llama`` class numbers positions itself. A Session's KV cache is float32
and its flash attention off, so attention runs in float32 and the only rounding beyond float32 is
the one llama.cpp's matrix products do by design (see docs/VERIFY.md); a Context uses llama.cpp's
defaults (float16 cache), as users run it. Every object that holds llama.cpp handles lives here,
so one loader and one context builder serve all.
"""

from __future__ import annotations

import functools
import os
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from .errors import PyntkError
from .llamacpp import RopeView, python_kwargs, read, to_llama, with_context
from .record import read_original
from .plan import acts_unscaled, static_equivalent
from .scaling import RopeScaling

_QUIET = None


def llama_kwargs(scaling: RopeScaling, view: RopeView) -> dict:
    """llama-cpp-python ``Llama(...)`` keyword arguments that make llama.cpp apply ``scaling`` to
    the file ``view`` describes, whatever rope settings it carries (key overrides only for the
    values that differ from the file's, so equal files share one loaded model)."""
    if scaling.method == "dynamic":
        raise PyntkError("llama.cpp has no runtime setting for 'dynamic': give the static scaling for a "
                         "length (pyntk.plan.static_equivalent) or use pyntk.dynamic")
    _check_runtime(scaling)
    return python_kwargs(with_context(to_llama(scaling), view), view.arch, file=view)


def _check_runtime(scaling: RopeScaling) -> None:
    if scaling.method == "llama3":
        raise PyntkError("llama.cpp has no runtime setting for 'llama3': it takes Llama 3.1's bands from a "
                         "rope_freqs tensor in the model, not from parameters")


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
        self._free = lib.llama_model_free  # kept: at interpreter exit the module's names are gone
        self.ptr = lib.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            raise PyntkError(f"{path}: llama.cpp could not load this model (run with PYNTK_DEBUG=1 "
                             f"to see its log)")
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self._free(self.ptr)


@functools.lru_cache(maxsize=2)
def _model(path: str, size: int, mtime_ns: int, kv_overrides: tuple) -> _Model:
    del size, mtime_ns  # cache key only
    return _Model(path, kv_overrides)


def _load(path: str, kv_overrides: dict) -> _Model:
    """The model at ``path`` with these key overrides, loaded once while the file is unchanged."""
    st = os.stat(path)
    return _model(path, st.st_size, st.st_mtime_ns, tuple(sorted(kv_overrides.items())))


def _new_context(model: _Model, *, n_ctx: int, n_batch: int, n_seq: int, threads: int,
                 flash_attn: bool, settings: dict):
    """A llama_context (NULL if llama.cpp refuses); ``settings`` are more context parameters."""
    lib = model.lib
    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                              else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    for name, value in settings.items():
        setattr(params, name, value)
    return lib.llama_init_from_model(model.ptr, params)


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
        self.info = read(self.path)
        kw = llama_kwargs(scaling, self.info) if scaling is not None else {}
        self.model = _load(self.path, kw.pop("kv_overrides", {}))
        lib = self.lib = self.model.lib
        self._free = lib.llama_free  # kept: at interpreter exit the module's names are gone
        # one cell pool (copying a sequence only tags its cells), attention in float32
        kw.update(kv_unified=True, type_k=lib.GGML_TYPE_F32, type_v=lib.GGML_TYPE_F32)
        self.ctx = _new_context(self.model, n_ctx=n_ctx, n_batch=n_ctx, n_seq=n_seq,
                                threads=threads or _cores(), flash_attn=False, settings=kw)
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
            self._free(self.ctx)
            self.ctx = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


# --- contexts that stream logits (perplexity, dynamic scaling) --------------------------------

N_BATCH = 512  # llama-cpp-python's default; the logits buffer is n_batch x n_vocab floats


class Model:
    """A GGUF model in llama.cpp, loaded once (weights memory-mapped) and shared by its contexts.

    Scalings are applied per context from the model's original RoPE values (before any
    gguf-set edit), whatever rope settings the file itself carries.
    """

    def __init__(self, path, *, threads: Optional[int] = None) -> None:
        self.path = os.path.realpath(os.fspath(path))
        if not os.path.isfile(self.path):
            raise PyntkError(f"{path}: no such model file; give the path of a .gguf file")
        self.info: RopeView = read_original(self.path)  # the values scalings start from
        self.current: RopeView = read(self.path)  # what the file makes llama.cpp run
        self.threads = threads or _cores()
        self.lib = _lib()
        self._plain = _load(self.path, {})

    @property
    def n_vocab(self) -> int:
        return self._plain.n_vocab

    @property
    def vocab(self):
        return self._plain.vocab

    @property
    def training_context(self) -> int:
        return self.info.original_context

    def tokenize(self, text: str, *, special: bool = False) -> np.ndarray:
        """The text's tokens (int32), without BOS; special-token text is read as plain text
        unless ``special`` (then ``<|im_start|>`` is that token, as llama.cpp's server reads it)."""
        data = text.encode("utf-8")
        room = len(data) + 16  # enough for byte-level vocabularies; llama.cpp says if it is not
        for _ in range(2):
            buf = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, room, False, special)
            if n >= 0:
                return np.frombuffer(buf, dtype=np.int32, count=n).copy()
            room = -n  # the number of tokens needed
        raise PyntkError("llama.cpp could not tokenize the text; check that it is UTF-8 text")

    def bos(self) -> Optional[int]:
        """The token llama.cpp puts first in a sequence, or None when the model adds none."""
        vocab = self.vocab
        return int(self.lib.llama_vocab_bos(vocab)) if self.lib.llama_vocab_get_add_bos(vocab) else None

    def runs_as(self, scaling: RopeScaling, length: int) -> tuple:
        """What llama.cpp is told for ``scaling`` at ``length`` tokens: equal keys, equal runs."""
        _check_runtime(scaling)
        effective = static_equivalent(scaling, length)
        if acts_unscaled(effective, length):
            effective = RopeScaling(method="none", base=scaling.base, dims=scaling.dims)
        kw = llama_kwargs(effective, self.current)
        kw["kv_overrides"] = tuple(sorted(kw.get("kv_overrides", {}).items()))
        return tuple(sorted(kw.items()))

    def context(self, n_ctx: int, scaling: RopeScaling, *, n_batch: int = N_BATCH,
                flash_attn: bool = False, swa_full: bool = True) -> "Context":
        """A llama.cpp context of ``n_ctx`` cells running ``scaling`` (dynamic: the base for n_ctx).
        ``swa_full=False``: sliding-window layers cache only their window (llama.cpp's tools'
        default); the context then cannot go back to earlier positions."""
        return Context(self, n_ctx, static_equivalent(scaling, n_ctx), n_batch=n_batch,
                       flash_attn=flash_attn, swa_full=swa_full)


class Context:
    """One llama_context: decodes a sequence batch by batch, logits only for requested rows."""

    def __init__(self, model: Model, n_ctx: int, scaling: RopeScaling, *, n_batch: int,
                 flash_attn: bool, swa_full: bool = True) -> None:
        kw = {**llama_kwargs(scaling, model.current), "swa_full": swa_full}
        self.model = _load(model.path, kw.pop("kv_overrides", {}))
        self.lib = lib = model.lib
        self.scaling, self.n_ctx, self.n_vocab = scaling, n_ctx, self.model.n_vocab
        self.n_batch = min(n_batch, n_ctx)
        # kept: at interpreter exit the module's names are gone
        self._free, self._free_batch = lib.llama_free, lib.llama_batch_free
        self.ctx = _new_context(self.model, n_ctx=n_ctx, n_batch=self.n_batch, n_seq=1,
                                threads=model.threads, flash_attn=flash_attn, settings=kw)
        if not self.ctx:
            raise PyntkError(f"{model.path}: llama.cpp could not create a context of {n_ctx} tokens "
                             f"(out of memory?); use a shorter --ctx")
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        # numpy views of the batch's arrays: filling them is one vectorised copy per batch
        view = lambda ptr: np.ctypeslib.as_array(ptr, shape=(self.n_batch,))  # noqa: E731
        self._token, self._pos = view(self.batch.token), view(self.batch.pos)
        self._n_seq, self._out = view(self.batch.n_seq_id), view(self.batch.logits)
        self._n_seq[:] = 1
        for i in range(self.n_batch):
            self.batch.seq_id[i][0] = 0

    def decode(self, tokens: np.ndarray, outputs: np.ndarray,
               start: int = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Decode ``tokens`` at positions start, start+1, ...; for every batch yield (the indices
        into ``tokens`` of the rows with outputs[i] set, their logits as a float32 view).

        The view is only valid until the next batch is decoded: reduce it before moving on.
        """
        if len(tokens) != len(outputs) or start + len(tokens) > self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens from position {start} do not fit a context of "
                             f"{self.n_ctx}, or outputs has another length")
        lib = self.lib
        for lo in range(0, len(tokens), self.n_batch):
            hi = min(lo + self.n_batch, len(tokens))
            n = hi - lo
            self.batch.n_tokens = n
            self._token[:n] = tokens[lo:hi]
            self._pos[:n] = np.arange(start + lo, start + hi)
            self._out[:n] = outputs[lo:hi]
            code = lib.llama_decode(self.ctx, self.batch)
            if code != 0:
                raise PyntkError(f"llama.cpp failed to decode tokens {start + lo}..{start + hi} "
                                 f"(code {code}); run with PYNTK_DEBUG=1 to see its log")
            rows = np.flatnonzero(outputs[lo:hi]) + lo
            if rows.size:
                logits = np.ctypeslib.as_array(lib.llama_get_logits(self.ctx),
                                               shape=(rows.size, self.n_vocab))
                yield rows, logits

    def logprobs(self, tokens: np.ndarray, first: int) -> np.ndarray:
        """log p(tokens[i] | tokens[:i]) for i = first .. len-1 (float64), decoded from position 0."""
        n = len(tokens)
        outputs = np.zeros(n, dtype=np.int8)
        outputs[first - 1:n - 1] = 1  # row i predicts token i+1
        result = np.empty(n - first, dtype=np.float64)
        work = np.empty((self.n_batch, self.n_vocab), dtype=np.float32)
        for rows, logits in self.decode(tokens, outputs):
            result[rows - (first - 1)] = _target_logprobs(logits, tokens[rows + 1], work)
        return result

    def logits(self, tokens: Sequence[int], start: int = 0) -> np.ndarray:
        """All logits (len(tokens), n_vocab) of tokens decoded at start, start+1, ... (a copy)."""
        tokens = np.asarray(tokens, dtype=np.int32)
        out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
        for rows, logits in self.decode(tokens, np.ones(len(tokens), dtype=np.int8), start):
            out[rows] = logits
        return out

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self._free_batch(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            self._free(self.ctx)
            self.ctx = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _target_logprobs(logits: np.ndarray, targets: np.ndarray, work: np.ndarray) -> np.ndarray:
    """log_softmax(logits)[row, target] per row, without another n_rows x n_vocab temporary."""
    rows = logits.shape[0]
    peak = logits.max(axis=1)
    shifted = np.subtract(logits, peak[:, None], out=work[:rows])
    np.exp(shifted, out=shifted)
    log_total = np.log(shifted.sum(axis=1, dtype=np.float64)) + peak
    return logits[np.arange(rows), targets].astype(np.float64) - log_total


# Dynamic scaling moved to pyntk.dynamic; pyntk.llama.DynamicNTK was public API in the first
# release (and pyntk.llama.Dynamic was documented), so these names still resolve here. Looked up
# on first use, not imported at the top: pyntk.dynamic imports this module.
_MOVED = ("Cancelled", "Dynamic", "DynamicNTK", "DynamicPolicy", "check_runnable")


def __getattr__(name: str):
    if name in _MOVED:
        from . import dynamic
        return getattr(dynamic, name)
    raise AttributeError(f"module 'pyntk.llama' has no attribute {name!r}")
