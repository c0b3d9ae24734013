"""llama-cpp-python bridge: run a GGUF model in llama.cpp with the file's RoPE settings or a
RopeScaling override.

- :class:`Session` decodes tokens at explicit positions and returns every logit (pyntk verify);
- :class:`Model` and its :class:`Context` stream: logits only for the rows asked for, batch by
  batch (pyntk ppl);
- :class:`DynamicNTK` gives every request the Dynamic NTK base for its length, which llama.cpp
  itself lacks.

It uses llama-cpp-python's low-level API (llama_batch_init / llama_decode / llama_get_logits_ith)
because the high-level ``Llama`` class numbers positions itself. A Session's KV cache is float32
and its flash attention off, so attention runs in float32 and the only rounding beyond float32 is
the one llama.cpp's matrix products do by design (see docs/VERIFY.md); a Context uses llama.cpp's
defaults (float16 cache), as users run it.

Over 500 lines: every object that holds llama.cpp handles lives here so one loader and one
context builder serve all; the next seam to cut is dynamic scaling (DynamicPolicy, Dynamic) into a
module of its own.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import PyntkError
from .llamacpp import CTX_PAD, RopeView, python_kwargs, read, to_llama, with_context
from .record import read_original
from .plan import acts_unscaled, scaling_for, static_equivalent
from .scaling import METHODS, RopeScaling

_QUIET = None


def llama_kwargs(scaling: RopeScaling, view: RopeView) -> dict:
    """llama-cpp-python ``Llama(...)`` keyword arguments that make llama.cpp apply ``scaling`` to
    the file ``view`` describes, whatever rope settings it carries (key overrides only for the
    values that differ from the file's, so equal files share one loaded model)."""
    if scaling.method == "dynamic":
        raise PyntkError("llama.cpp has no runtime setting for 'dynamic': give the static scaling for a "
                         "length (pyntk.plan.static_equivalent) or use pyntk.llama's dynamic scaling")
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


# --- contexts that stream logits (perplexity), and Dynamic NTK --------------------------------

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
                flash_attn: bool = False) -> "Context":
        """A llama.cpp context of ``n_ctx`` cells running ``scaling`` (dynamic: the base for n_ctx)."""
        return Context(self, n_ctx, static_equivalent(scaling, n_ctx), n_batch=n_batch,
                       flash_attn=flash_attn)


class Context:
    """One llama_context: decodes a sequence batch by batch, logits only for requested rows."""

    def __init__(self, model: Model, n_ctx: int, scaling: RopeScaling, *, n_batch: int,
                 flash_attn: bool) -> None:
        kw = llama_kwargs(scaling, model.current)
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


class Cancelled(Exception):
    """The caller gave up (its ``give_up`` event was set) while waiting for a context."""


@dataclass(frozen=True)
class DynamicPolicy:
    """Which static scaling a request of ``length`` tokens runs with when ``method`` is scaled
    dynamically: the one fact :class:`Dynamic` serves and `pyntk ppl --method dynamic-METHOD`
    measures.

    A request runs in a context of its length bucket B: the training context L0 when it fits
    there, where RoPE runs unscaled (nothing changes for short requests); beyond, its length
    rounded up to a multiple of ``bucket`` tokens, running ``method`` set up for B: yarn,
    ntk-by-parts and linear with factor B/L0, ntk with the alpha `pyntk plan` gives for B, dynamic
    with Hugging Face's Dynamic NTK base for B (whose own factor s stays max_context/L0 unless
    ``factor`` is given).
    """

    method: str
    base: float
    dims: int
    training_context: int
    max_context: int
    bucket: int = CTX_PAD
    factor: Optional[float] = None  # Dynamic NTK's s (method "dynamic" only)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        for name in ("training_context", "max_context", "bucket"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.factor is not None and self.method != "dynamic":
            raise ValueError(f"factor applies to method 'dynamic' only; {self.method} takes its "
                             f"factor from each request's length")

    @property
    def scaling(self) -> RopeScaling:
        """``method`` set up for max_context: what the longest request runs with."""
        params = {"factor": self.factor} if self.factor is not None else {}
        return scaling_for(self.method, self.max_context, dims=self.dims, base=self.base,
                           training_context=self.training_context, **params)

    def bucket_for(self, length: int) -> int:
        """The context length a request of ``length`` tokens runs in."""
        if isinstance(length, bool) or int(length) != length or length < 1:
            raise ValueError(f"length must be a positive whole number of tokens, got {length!r}")
        if length > self.max_context:
            raise PyntkError(f"a request of {length} tokens (prompt plus max_tokens) exceeds "
                             f"max_context {self.max_context}; raise max_context or shorten it")
        if length <= self.training_context:
            return self.training_context
        return -(-int(length) // self.bucket) * self.bucket

    def scaling_for(self, length: int) -> RopeScaling:
        """The static scaling a request of ``length`` tokens runs with."""
        n = self.bucket_for(length)
        if n <= self.training_context:
            return RopeScaling(method="none", base=self.base, dims=self.dims)
        if self.method == "dynamic":
            return static_equivalent(self.scaling, n)
        return scaling_for(self.method, n, dims=self.dims, base=self.base,
                           training_context=self.training_context)

    def describe(self) -> str:
        L0 = self.training_context
        how = {"ntk": "the alpha pyntk plan gives for B",
               "dynamic": f"Hugging Face's Dynamic NTK base for B, factor {self.scaling.factor:g}",
               "none": "unscaled"}.get(self.method, f"factor B/{L0}")
        return (f"{self.method} set up for each request's length bucket B ({how}) beyond {L0} "
                f"tokens, unscaled within")


def check_runnable(model: Model, policy: DynamicPolicy) -> None:
    """Refuse now a method llama.cpp cannot run (llama3 needs a rope_freqs tensor), whatever the
    lengths asked for: it is tried at twice the training context, where every method acts."""
    n = 2 * policy.training_context
    model.runs_as(scaling_for(policy.method, n, dims=policy.dims, base=policy.base,
                              training_context=policy.training_context), n)


class Dynamic:
    """Dynamic scaling of any method for llama-cpp-python: every request runs with the method set
    up for its own length (see :class:`DynamicPolicy`), unscaled within the training context.

    llama.cpp fixes a context's RoPE when the context is created, so :class:`Dynamic` loads the
    model once (weights memory-mapped, one llama_model shared by every context) and keeps at most
    ``cached`` contexts, each for one length bucket, the least recently used replaced first. The
    KV cache a context takes is known before it is created (:meth:`kv_bytes`): at most ``cached``
    times ``kv_bytes(max_context)``. The base never changes within a request: every key and query
    of a request share one scaling (unlike Hugging Face's generate(), whose base grows while keys
    cached under the old base stay rotated by it).

    Thread-safe: :meth:`acquire` lends a context to one caller at a time; callers wait while all
    ``cached`` contexts are lent out.

    model_path        a .gguf file
    method            the scaling applied beyond the training context (pyntk.scaling.METHODS)
    max_context       the longest request (prompt + generated tokens) to allow
    factor            Dynamic NTK's s (method "dynamic" only); default max_context / L0
    original_context  L0, the training context; default read from the file
    bucket            lengths beyond L0 are rounded up to a multiple of this many tokens
    cached            how many contexts (each with its own KV cache) to keep
    threads           CPU threads; default all available
    flash_attn        llama.cpp's flash attention (less memory at long contexts)

    >>> with Dynamic("model.gguf", "yarn", max_context=32768) as dyn:
    ...     dyn.generate("Summarise: " + long_text, max_tokens=200)
    """

    def __init__(self, model_path, method: str = "yarn", max_context: Optional[int] = None, *,
                 factor: Optional[float] = None, original_context: Optional[int] = None,
                 bucket: int = CTX_PAD, cached: int = 2, threads: Optional[int] = None,
                 flash_attn: bool = False) -> None:
        if isinstance(cached, bool) or not isinstance(cached, int) or cached < 1:
            raise ValueError(f"cached must be a whole number >= 1, got {cached!r}")
        self.model = Model(model_path, threads=threads)
        info = self.model.info
        L0 = original_context or self.model.training_context
        if max_context is None:
            if factor is None:
                raise PyntkError(f"give max_context (the longest prompt plus generation, e.g. {4 * L0})"
                                 + (" or factor (Dynamic NTK's s)" if method == "dynamic" else ""))
            max_context = int(factor * L0)
        self.policy = DynamicPolicy(method, info.base, info.dims, L0, max_context, bucket, factor)
        check_runnable(self.model, self.policy)
        self.cached, self.flash_attn = cached, flash_attn
        self._lock = threading.Condition()
        self._kept: "OrderedDict[Context, int]" = OrderedDict()  # context -> bucket, LRU first
        self._lent: set = set()
        self._creating = 0  # contexts being created, outside the lock

    @property
    def method(self) -> str:
        return self.policy.method

    @property
    def max_context(self) -> int:
        return self.policy.max_context

    @property
    def training_context(self) -> int:
        return self.policy.training_context

    def bucket_for(self, length: int) -> int:
        return self.policy.bucket_for(length)

    def scaling_for(self, length: int) -> RopeScaling:
        """The static scaling a request of ``length`` tokens runs with."""
        return self.policy.scaling_for(length)

    def base_for(self, length: int) -> float:
        """The rope base llama.cpp runs a request of ``length`` tokens with."""
        s = self.scaling_for(length)
        return s.ntk_base if s.method == "ntk" else s.base

    def kv_bytes(self, length: int) -> int:
        """Bytes of KV cache the context for a request of ``length`` tokens allocates.

        llama.cpp (src/llama-kv-cache.cpp) gives every layer a K and a V tensor of
        n_embd_k_gqa (resp. n_embd_v_gqa) x cells elements of the cache type (float16 unless told
        otherwise), cells = n_ctx padded to 256. Sliding-window layers too: contexts keep
        llama.cpp's default swa_full, a full-size cache for them (llama-kv-cache-iswa.cpp).
        """
        lib, ptr = self.model.lib, self.model._plain.ptr
        cells = -(-self.bucket_for(length) // CTX_PAD) * CTX_PAD
        head = lib.llama_model_n_embd(ptr) // lib.llama_model_n_head(ptr)
        arch = self.model.info.arch
        k = _meta_int(self.model, f"{arch}.attention.key_length", head)
        v = _meta_int(self.model, f"{arch}.attention.value_length", head)
        per_cell = lib.llama_model_n_layer(ptr) * lib.llama_model_n_head_kv(ptr) * (k + v)
        return per_cell * cells * _F16_BYTES

    @contextmanager
    def acquire(self, length: int, *, give_up: Optional[threading.Event] = None) -> Iterator[Context]:
        """Lend the (emptied) context for a request of ``length`` tokens, created on first use;
        wait while every context is lent out. Raises :class:`Cancelled` when ``give_up`` is set
        during the wait."""
        n = self.bucket_for(length)
        ctx = None
        with self._lock:
            while True:
                idle = [c for c in self._kept if c not in self._lent]
                ctx = next((c for c in reversed(idle) if self._kept[c] == n), None)
                if ctx is not None:
                    self._kept.move_to_end(ctx)
                    self._lent.add(ctx)
                    break
                if len(self._kept) + self._creating >= self.cached and idle:
                    self._kept.pop(idle[0])
                    idle[0].close()
                if len(self._kept) + self._creating < self.cached:
                    self._creating += 1  # its place is taken; created outside the lock
                    break
                if give_up is not None and give_up.is_set():
                    raise Cancelled()
                self._lock.wait(0.05)
        if ctx is None:
            try:
                ctx = self.model.context(n, self.scaling_for(n), flash_attn=self.flash_attn)
            finally:
                with self._lock:
                    self._creating -= 1
                    if ctx is not None:
                        self._kept[ctx] = n
                        self._lent.add(ctx)
                    self._lock.notify_all()
        try:
            ctx.clear()
            yield ctx
        finally:
            with self._lock:
                self._lent.discard(ctx)
                self._lock.notify_all()

    def context_for(self, length: int) -> Context:
        """The (emptied) context for a request of ``length`` tokens, for single-threaded use."""
        with self.acquire(length) as ctx:
            return ctx

    def kept(self) -> List[Tuple[int, bool]]:
        """(bucket, lent out) of every context kept, least recently used first."""
        with self._lock:
            return [(n, c in self._lent) for c, n in self._kept.items()]

    def tokenize(self, text: str, *, special: bool = False) -> List[int]:
        """Tokens of a prompt, with BOS first when the model wants one (once: text that starts
        with it keeps its own). ``special``: text such as ``<|im_start|>`` becomes that token."""
        ids = self.model.tokenize(text, special=special).tolist()
        bos = self.model.bos()
        return ids if bos is None or ids[:1] == [bos] else [bos] + ids

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens: none)."""
        lib, vocab = self.model.lib, self.model.vocab
        buf = (ctypes.c_char * 256)()
        n = lib.llama_token_to_piece(vocab, int(token), buf, len(buf), 0, False)
        if n < 0:  # the piece needs -n bytes
            buf = (ctypes.c_char * -n)()
            n = lib.llama_token_to_piece(vocab, int(token), buf, len(buf), 0, False)
        return bytes(buf[:max(n, 0)])

    def detokenize(self, tokens: Sequence[int]) -> str:
        # a character may span tokens: decode the bytes together
        return b"".join(map(self.piece, tokens)).decode("utf-8", errors="replace")

    @functools.cached_property
    def _chat_formatter(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = _meta(self.model, "tokenizer.chat_template")
        if template is None:
            raise PyntkError(f"{self.model.path}: has no chat template (tokenizer.chat_template); "
                             f"send your own prompt format as a completion")
        lib, vocab = self.model.lib, self.model.vocab
        text = lambda token: _special_text(lib, vocab, token)  # noqa: E731
        return Jinja2ChatFormatter(template, eos_token=text(lib.llama_vocab_eos(vocab)),
                                   bos_token=text(lib.llama_vocab_bos(vocab)))

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """The model's chat template (the GGUF's tokenizer.chat_template, rendered by
        llama-cpp-python's Jinja2ChatFormatter) applied to ``messages``, ending where the
        assistant's answer begins. A template's own refusal is a ValueError."""
        return self._chat_formatter(messages=list(messages)).prompt

    def tokens(self, ctx: Context, prompt: Sequence[int], max_tokens: int, *,
               temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None,
               stop: Optional[Callable[[], bool]] = None) -> Iterator[int]:
        """Generate after ``prompt`` in ``ctx`` (from :meth:`acquire`): yield each new token, at
        most ``max_tokens``, stopping before an end-of-generation token, or as soon as ``stop()``
        is true (asked between batches of the prompt and before each token). Sampling is
        llama.cpp's own sampler chain (top-p, temperature, seeded draw; greedy at temperature 0)."""
        prompt = np.asarray(prompt, dtype=np.int32)
        if prompt.size == 0:
            raise ValueError("the prompt is empty")
        end = prompt.size + max_tokens
        if end > ctx.n_ctx:
            raise PyntkError(f"{prompt.size} prompt tokens plus {max_tokens} to generate do not fit "
                             f"the context of {ctx.n_ctx}; acquire it for {end} tokens")
        stop = stop or (lambda: False)
        lib, vocab = self.model.lib, self.model.vocab
        sampler = _sampler(lib, temperature, top_p, seed)
        try:
            for lo in range(0, prompt.size, ctx.n_batch):
                if stop():
                    return
                batch = prompt[lo:lo + ctx.n_batch]
                outputs = np.zeros(batch.size, dtype=np.int8)
                outputs[-1] = lo + batch.size == prompt.size  # logits of the prompt's last token
                for _ in ctx.decode(batch, outputs, lo):
                    pass
            one = np.ones(1, dtype=np.int8)
            for pos in range(prompt.size, end):
                if stop():
                    return
                token = lib.llama_sampler_sample(sampler, ctx.ctx, -1)
                if lib.llama_vocab_is_eog(vocab, token):
                    return
                yield token
                if pos + 1 < end:
                    for _ in ctx.decode(np.array([token], dtype=np.int32), one, pos):
                        pass
        finally:
            lib.llama_sampler_free(sampler)

    def logits(self, tokens: Sequence[int], max_new_tokens: int = 0) -> np.ndarray:
        """Logits (len(tokens), n_vocab) of a request whose full length is len + max_new_tokens."""
        tokens = list(tokens)
        if not tokens:
            raise ValueError("give at least one token")
        with self.acquire(len(tokens) + max_new_tokens) as ctx:
            return ctx.logits(tokens)

    def generate(self, prompt: Union[str, Sequence[int]], max_tokens: int = 128, *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None) -> str:
        """Continue ``prompt`` by up to ``max_tokens`` tokens (greedy when temperature is 0)."""
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise ValueError("the prompt is empty")
        with self.acquire(len(tokens) + max_tokens) as ctx:
            new = list(self.tokens(ctx, tokens, max_tokens, temperature=temperature, top_p=top_p,
                                   seed=seed))
        return self.detokenize(new)

    def close(self) -> None:
        with self._lock:
            while self._kept:
                self._kept.popitem()[0].close()

    def __enter__(self) -> "Dynamic":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DynamicNTK(Dynamic):
    """Dynamic NTK for llama-cpp-python users: :class:`Dynamic` with method "dynamic". A request of
    L tokens runs in its bucket B with Hugging Face's base (pyntk.RopeScaling(method="dynamic"))

        b' = b * (s * B / L0 - (s - 1)) ** (d / (d - 2))    if B > L0, else b

    ``scaling`` is that Dynamic NTK scaling (factor s, default max_context / L0).

    >>> dyn = DynamicNTK("model.gguf", max_context=32768)
    >>> dyn.generate("Summarise: " + long_text, max_tokens=200)
    """

    def __init__(self, model_path, max_context: Optional[int] = None, *,
                 factor: Optional[float] = None, original_context: Optional[int] = None,
                 bucket: int = CTX_PAD, cached: int = 2, threads: Optional[int] = None) -> None:
        super().__init__(model_path, "dynamic", max_context, factor=factor,
                         original_context=original_context, bucket=bucket, cached=cached,
                         threads=threads)

    @property
    def scaling(self) -> RopeScaling:
        return self.policy.scaling


_F16_BYTES = 2  # llama.cpp's default KV cache type, which Context keeps


def _meta(model: Model, key: str) -> Optional[str]:
    """A GGUF metadata value as llama.cpp read it (as text), or None when the file lacks it."""
    lib, ptr = model.lib, model._plain.ptr
    size = 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = lib.llama_model_meta_val_str(ptr, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1
    return None


def _meta_int(model: Model, key: str, default: int) -> int:
    text = _meta(model, key)
    return default if text is None else int(text)


def _special_text(lib, vocab, token: int) -> str:
    """A token's text with special tokens spelled out (``<|im_end|>``), as chat templates use them."""
    buf = (ctypes.c_char * 256)()
    n = lib.llama_token_to_piece(vocab, int(token), buf, len(buf), 0, True)
    return bytes(buf[:max(n, 0)]).decode("utf-8", errors="replace")


def _sampler(lib, temperature: float, top_p: float, seed: Optional[int]):
    """llama.cpp's sampler chain in its own order (top-p, temperature, draw), or greedy."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if temperature <= 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    if top_p < 1:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(
        lib.LLAMA_DEFAULT_SEED if seed is None else seed % lib.LLAMA_DEFAULT_SEED))
    return chain
