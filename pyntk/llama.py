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
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from collections import OrderedDict
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import PyntkError
from .gguf_edit import (CTX_PAD, LLAMA_CPP_TYPES, RUNTIME_METHODS, RopeInfo, read_original_rope,
                        read_rope)
from .plan import acts_unscaled, static_equivalent
from .scaling import RopeScaling

_QUIET = None


def llama_kwargs(scaling: RopeScaling, info: RopeInfo) -> dict:
    """llama-cpp-python ``Llama(...)`` keyword arguments that make llama.cpp apply ``scaling`` to
    the model described by ``info``, whatever rope settings the file itself carries."""
    s = scaling
    if s.method not in RUNTIME_METHODS:
        raise PyntkError(f"llama.cpp has no runtime setting for {s.method!r}; it applies "
                         f"{', '.join(RUNTIME_METHODS)} (ntk as a larger base)")
    kind = RUNTIME_METHODS[s.method]
    kw: dict = {"rope_scaling_type": LLAMA_CPP_TYPES.index(kind),
                "rope_freq_base": s.ntk_base if s.method == "ntk" else s.base,
                "rope_freq_scale": 1.0 if kind == "none" else 1.0 / s.factor,
                "yarn_ext_factor": 1.0 if kind == "yarn" else 0.0}
    attention = 1.0
    if kind == "yarn":
        kw.update(yarn_orig_ctx=s.original_context, yarn_beta_fast=s.beta_fast,
                  yarn_beta_slow=s.beta_slow)
        # llama.cpp always applies YaRN's temperature 0.1*ln(s)+1 and multiplies it by the file's
        # rope.scaling.attn_factor; NTK-by-parts is YaRN with that product equal to 1.
        attention = s.attn_factor if s.method == "yarn" else 1.0 / (0.1 * math.log(s.factor) + 1.0)
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
        self.info = read_rope(self.path)
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
        self.info: RopeInfo = read_original_rope(self.path)
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

    def tokenize(self, text: str) -> np.ndarray:
        """The text's tokens (int32), without BOS; special-token text is read as plain text."""
        data = text.encode("utf-8")
        room = len(data) + 16  # enough for byte-level vocabularies; llama.cpp says if it is not
        for _ in range(2):
            buf = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, room, False, False)
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
        effective = static_equivalent(scaling, length)
        if acts_unscaled(effective, length):
            effective = RopeScaling(method="none", base=scaling.base, dims=scaling.dims)
        kw = llama_kwargs(effective, self.info)
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
        kw = llama_kwargs(scaling, model.info)
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


class DynamicNTK:
    """Dynamic NTK for llama-cpp-python users: every request runs with the base for its full length.

    llama.cpp has no Dynamic NTK, and a context's RoPE base is fixed when the context is created. So
    :class:`DynamicNTK` loads the model once (weights memory-mapped, shared by every context) and
    keeps a few llama.cpp contexts, one per length bucket. A request of L tokens (the prompt plus
    every token it may generate) runs in its bucket's context, whose base is Dynamic NTK's for the
    bucket's length B (Hugging Face's formula, pyntk.RopeScaling(method="dynamic")):

        b' = b * (s * B / L0 - (s - 1)) ** (d / (d - 2))    if B > L0, else b

    Buckets: every request within the training context L0 shares one unscaled context of L0 tokens,
    so it runs exactly like the unscaled model; longer requests are rounded up to a multiple of
    ``bucket`` tokens (default 256, llama.cpp's own context padding), so their base is that of a
    length less than ``bucket`` tokens above theirs. The base never changes within a request:
    unlike Hugging Face's generate(), whose base grows while keys cached under the old base stay
    rotated by it, every key and query of a request share one base.

    model_path        a .gguf file
    max_context       the longest request (prompt + generated tokens) to allow
    factor            Dynamic NTK's s; default max_context / L0 (Hugging Face's convention)
    original_context  L0, the training context; default read from the file
    bucket            lengths beyond L0 are rounded up to a multiple of this many tokens
    cached            how many contexts (each with its own KV cache) to keep
    threads           CPU threads; default all available

    >>> dyn = DynamicNTK("model.gguf", max_context=32768)
    >>> dyn.generate("Summarise: " + long_text, max_tokens=200)
    """

    def __init__(self, model_path, max_context: Optional[int] = None, *,
                 factor: Optional[float] = None, original_context: Optional[int] = None,
                 bucket: int = CTX_PAD, cached: int = 2, threads: Optional[int] = None) -> None:
        checked = [("bucket", bucket), ("cached", cached)]
        if max_context is not None:
            checked.append(("max_context", max_context))
        for name, value in checked:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        self.model = Model(model_path, threads=threads)
        L0 = original_context or self.model.training_context
        if max_context is None and factor is None:
            raise PyntkError(f"give max_context (the longest prompt plus generation, e.g. {4 * L0}) "
                             f"or factor (Dynamic NTK's s)")
        if factor is None:
            factor = max(1.0, max_context / L0)
        if max_context is None:
            max_context = int(factor * L0)
        info = self.model.info
        self.scaling = RopeScaling(method="dynamic", base=info.base, dims=info.dims,
                                   factor=factor, original_context=L0)
        self.max_context, self.bucket, self.cached = int(max_context), bucket, cached
        self._contexts: "OrderedDict[int, Context]" = OrderedDict()

    @property
    def training_context(self) -> int:
        return self.scaling.original_context

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
        """The static scaling a request of ``length`` tokens runs with (none or ntk)."""
        return static_equivalent(self.scaling, self.bucket_for(length))

    def base_for(self, length: int) -> float:
        s = self.scaling_for(length)
        return s.ntk_base if s.method == "ntk" else s.base

    def context_for(self, length: int) -> Context:
        """The (emptied) context for a request of ``length`` tokens, created on first use."""
        n = self.bucket_for(length)
        ctx = self._contexts.pop(n, None)
        if ctx is None:
            while len(self._contexts) >= self.cached:
                self._contexts.popitem(last=False)[1].close()
            ctx = self.model.context(n, self.scaling)
        else:
            ctx.clear()
        self._contexts[n] = ctx
        return ctx

    def tokenize(self, text: str) -> List[int]:
        """Tokens of a prompt, with BOS first when the model wants one."""
        bos = self.model.bos()
        return ([bos] if bos is not None else []) + self.model.tokenize(text).tolist()

    def logits(self, tokens: Sequence[int], max_new_tokens: int = 0) -> np.ndarray:
        """Logits (len(tokens), n_vocab) of a request whose full length is len + max_new_tokens."""
        tokens = list(tokens)
        if not tokens:
            raise ValueError("give at least one token")
        return self.context_for(len(tokens) + max_new_tokens).logits(tokens)

    def generate(self, prompt: Union[str, Sequence[int]], max_tokens: int = 128, *,
                 temperature: float = 0.0, seed: Optional[int] = None) -> str:
        """Continue ``prompt`` by up to ``max_tokens`` tokens (greedy when temperature is 0)."""
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise ValueError("the prompt is empty")
        ctx = self.context_for(len(tokens) + max_tokens)
        rng = np.random.default_rng(seed)
        outputs = np.zeros(len(tokens), dtype=np.int8)
        outputs[-1] = 1
        logits = next(ctx.decode(np.asarray(tokens, dtype=np.int32), outputs))[1][0].copy()
        new: List[int] = []
        for pos in range(len(tokens), len(tokens) + max_tokens):
            token = _pick(logits, temperature, rng)
            if self.model.lib.llama_vocab_is_eog(self.model.vocab, token):
                break
            new.append(token)
            if len(new) < max_tokens:
                logits = next(ctx.decode(np.array([token], dtype=np.int32), np.ones(1, np.int8), pos))[1][0].copy()
        return self.detokenize(new)

    def detokenize(self, tokens: Sequence[int]) -> str:
        lib, vocab = self.model.lib, self.model.vocab
        buf = (ctypes.c_char * 256)()
        pieces = []
        for token in tokens:
            n = lib.llama_token_to_piece(vocab, int(token), buf, len(buf), 0, False)
            if n < 0:  # the piece needs -n bytes
                buf = (ctypes.c_char * -n)()
                n = lib.llama_token_to_piece(vocab, int(token), buf, len(buf), 0, False)
            pieces.append(bytes(buf[:max(n, 0)]))
        # a character may span tokens: decode the bytes together
        return b"".join(pieces).decode("utf-8", errors="replace")

    def close(self) -> None:
        while self._contexts:
            self._contexts.popitem()[1].close()

    def __enter__(self) -> "DynamicNTK":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(p.size, p=p / p.sum()))
