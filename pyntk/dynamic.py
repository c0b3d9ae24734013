"""Dynamic scaling: a llama.cpp context chosen per request, RoPE set up for the request's length.

llama.cpp fixes a context's RoPE when the context is created and has no Dynamic NTK, so scaling
per request means choosing (or creating) a context per request. This module owns that choice:
:class:`DynamicPolicy` says which static scaling a request of L tokens runs with (the one fact
`pyntk serve` serves and `pyntk ppl --method dynamic-METHOD` measures), and :class:`Dynamic`
keeps a few contexts over one loaded model, lends them to requests, generates in them, and says
beforehand how much memory they take. Running llama.cpp itself (models, contexts, decoding) is
pyntk.llama's.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from gguf import Keys

from .errors import PyntkError
from .llama import N_BATCH, Context, Model
from .llamacpp import CTX_PAD, cells
from .plan import scaling_for, static_equivalent
from .scaling import METHODS, RopeScaling


class ContextMemory(NamedTuple):
    """Bytes one llama.cpp context takes, part by part (see :meth:`Dynamic.memory`)."""

    kv: int       # the KV cache (llama.cpp logs "KV buffer size")
    compute: int  # the compute buffer, sized for the largest batch ("compute buffer size")
    work: int     # the CPU backend's work buffer for matrix products (not logged)
    output: int   # the logits buffer ("output buffer size")

    @property
    def total(self) -> int:
        return self.kv + self.compute + self.work + self.output


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
    memory a context takes (KV cache and compute buffers) is known before it is created
    (:meth:`memory`): at most ``cached`` times ``memory_bytes(max_context)``. The base never
    changes within a request: every key and query of a request share one scaling (unlike Hugging
    Face's generate(), whose base grows while keys cached under the old base stay rotated by it).

    Thread-safe: :meth:`acquire` lends a context to one caller at a time; callers wait while all
    ``cached`` contexts are lent out.

    model_path        a .gguf file
    method            the scaling applied beyond the training context (pyntk.scaling.METHODS)
    max_context       the longest request (prompt + generated tokens) to allow
    factor            Dynamic NTK's s (method "dynamic" only); default max_context / L0
    original_context  L0, the training context; default read from the file
    bucket            lengths beyond L0 are rounded up to a multiple of this many tokens
    cached            how many contexts (each with its own KV cache and compute buffers) to keep
    threads           CPU threads; default all available
    flash_attn        llama.cpp's flash attention (without it the compute buffers grow with the
                      context: :meth:`memory`)

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
        n_cells = cells(self.bucket_for(length))
        head = lib.llama_model_n_embd(ptr) // lib.llama_model_n_head(ptr)
        arch = self.model.info.arch
        k = _meta_int(self.model, Keys.Attention.KEY_LENGTH.format(arch=arch), head)
        v = _meta_int(self.model, Keys.Attention.VALUE_LENGTH.format(arch=arch), head)
        per_cell = lib.llama_model_n_layer(ptr) * lib.llama_model_n_head_kv(ptr) * (k + v)
        return per_cell * n_cells * _F16_BYTES

    def memory(self, length: int, *, flash_attn: Optional[bool] = None) -> ContextMemory:
        """What the context for a request of ``length`` tokens takes, known before it exists:
        llama.cpp's CPU backend, one sequence, a float16 cache of ``cells`` (n_ctx padded to 256),
        batches of T = min(N_BATCH, n_ctx) tokens, as :class:`Context` sets it up; ``flash_attn``
        defaults to this object's. The rules, read in the llama.cpp llama-cpp-python 0.3.36 vendors:

        kv       :meth:`kv_bytes`.
        compute  the buffer llama.cpp sizes on its worst-case graph (llama-context.cpp
                 sched_reserve / graph_reserve: T tokens, all of them outputs, attending to every
                 cell), as the peak of the tensors alive at once (ggml-alloc reuses dead ones'
                 memory): the larger of the logits, T x n_vocab floats, and a layer's attention
                 (llama-graph.cpp build_attn_mha): without flash attention the scores
                 softmax(K^T Q), n_head x cells x T floats, beside the mask (cells x T float32, or
                 float16 with flash attention, which never holds the scores; one per cache, two
                 for sliding-window models). Beside either, a few rows per token (residual, Q, K,
                 V...), small: bounded here by 4 n_embd (logits) and 2 n_embd + 4 n_head x head
                 + 2 n_kv_head x head floats (attention).
        work     without flash attention, the product of the scores with the float16 V cache
                 first converts the scores to float16 (ggml-cpu.c ggml_graph_plan: a matrix
                 product converts its whole second operand to the first's dot type), in the
                 CPU backend's work buffer, which the context keeps: n_head x cells x T x 2 bytes
                 once a prompt reaches the end of its context. llama.cpp does not log it.
        output   the logits of one row (llama-context.cpp output_reserve), all generation asks
                 for; :meth:`logits` asks for every row, growing it to T x n_vocab floats.

        Against the sizes llama.cpp logs (tests/test_dynamic.py) the estimate is at most 3% high.
        """
        flash = self.flash_attn if flash_attn is None else flash_attn
        lib, ptr = self.model.lib, self.model._plain.ptr
        n = self.bucket_for(length)
        n_cells = cells(n)  # the batch is not padded
        T = min(N_BATCH, n)
        n_embd, n_head = lib.llama_model_n_embd(ptr), lib.llama_model_n_head(ptr)
        arch = self.model.info.arch
        head = _meta_int(self.model, Keys.Attention.KEY_LENGTH.format(arch=arch), n_embd // n_head)
        q, kv_row = n_head * head, lib.llama_model_n_head_kv(ptr) * head
        masks = 2 if lib.llama_model_n_swa(ptr) > 0 else 1
        scores = 0 if flash else n_head * n_cells * T * _F32_BYTES
        mask = masks * n_cells * T * (_F16_BYTES if flash else _F32_BYTES)
        attention = scores + mask + (2 * n_embd + 4 * q + 2 * kv_row) * T * _F32_BYTES
        logits = (self.model.n_vocab + 4 * n_embd) * T * _F32_BYTES
        work = 0 if flash else n_head * n_cells * T * _F16_BYTES
        return ContextMemory(kv=self.kv_bytes(length), compute=max(attention, logits), work=work,
                             output=self.model.n_vocab * _F32_BYTES)

    def memory_bytes(self, length: int) -> int:
        """Bytes the context for a request of ``length`` tokens takes: :meth:`memory`'s total."""
        return self.memory(length).total

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
_F32_BYTES = 4


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
