"""Does llama.cpp compute what the rope settings say? The model runs twice, in llama.cpp (through
llama-cpp-python) and in pyntk's numpy reference (pyntk.forward) with the same scaling, and the
logits are compared. docs/VERIFY.md explains the layout and the thresholds; in short:

Layout. RoPE only sees the distance between a query and a key, so the check needs keys far
from the queries. A short far context (16 tokens at positions 0..15, BOS first) is followed by
N query tokens spread over [P/4, P]. Each query lives in its own llama.cpp sequence together with
the far context and one bridge token just before it (llama.cpp wants a sequence's positions
consecutive, so the bridge is what lets it start far away). A query therefore attends mostly to
keys thousands of positions back, where any error in the angles shows.

Thresholds. llama.cpp rounds the input of every matrix product with a quantized weight to
8 bits (Q8_0/Q8_1/Q8_K blocks), and with F16/BF16 weights to half precision, and forms its
rotary angles in float32; that moves its logits away from the exact ones. The reference is run a
second time with those errors applied (forward's ggml_rounding), which measures how far they move
these very logits: llama.cpp's deviation is another sample of the same error. A check passes when
the mean |dlogit| and the mean KL divergence stay within NOISE_FACTOR times that measured noise,
or within a float32 floor, and when llama.cpp is closer to the claimed scaling than to the same
scaling with its base 1% lower or higher (the neighbours; where the reference tells them apart).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import forward
from .errors import PyntkError
from .gguf_file import GGUFFile
from .llamacpp import RopeView
from .llamacpp import read as read_view
from .reference import inv_freq
from .reference import rotate as reference_rotate
from .scaling import RopeScaling

CONTEXT_TOKENS = 16
MAX_TOKENS = 255  # llama.cpp allows 256 sequences and the far context takes one
MAX_POSITION = 2**31 - 1  # llama_pos is int32
# llama.cpp's deviation from the exact logits came to at most 1.6 times the measured noise on every
# model, weight type and scaling tried (the most: Q4_1, whose block sums llama.cpp also rounds);
# 3 leaves room for that and for a single chaotic token. Measurements: docs/VERIFY.md.
NOISE_FACTOR = 3.0
# What is left when nothing is rounded (float32 weights, positions near 0) is float32 sums: a tiny
# float32 model measured mean |dlogit| 4e-6 and KL 5e-12 there. At the default positions a 1% base
# error gives mean |dlogit| > 0.8 and KL > 0.1 on every model tried.
FLOOR = {"mean_abs": 1e-3, "kl": 1e-6}
# The neighbours: the claimed scaling with its base this much lower and higher. llama.cpp must be
# closer to the claim than to either. On a model whose rounding noise is large next to what a 1%
# base error does to its logits (Gemma 3: 15 of its 18 layers never see a far key), this catches
# the error that the noise threshold alone misses (docs/VERIFY.md).
NEIGHBOUR = 0.01
# A neighbour counts when the reference tells it apart from the claim: its exact logits at least
# this many noise KLs away. llama.cpp computing the claim is then about that much closer to the
# claim than to the neighbour (KL is quadratic: the cross term of its rounding with the
# neighbour's difference is small next to it); below, the two are too close to compare.
RESOLVED = 0.25
EPS32 = 2.0 ** -24


@dataclass(frozen=True)
class Layout:
    """Which tokens sit where and who sees whom; ``queries`` are the rows that are compared."""

    tokens: np.ndarray
    positions: np.ndarray
    visible: np.ndarray  # visible[i, j]: token i attends to token j
    queries: np.ndarray  # indices into tokens
    context: int  # far-context tokens, at positions 0..context-1

    @property
    def query_positions(self) -> np.ndarray:
        return self.positions[self.queries]


def check_options(n_tokens: int, position: Optional[int]) -> None:
    """ValueError naming the option when --tokens or --position cannot be laid out."""
    if not 1 <= n_tokens <= MAX_TOKENS:
        raise ValueError(f"--tokens must be from 1 to {MAX_TOKENS} (llama.cpp's sequence limit), "
                         f"got {n_tokens}")
    lowest = 4 * (CONTEXT_TOKENS + 1)
    if position is not None and not lowest <= position <= MAX_POSITION:
        raise ValueError(f"--position must be from {lowest} (the queries stay clear of the "
                         f"{CONTEXT_TOKENS} far-context tokens) to {MAX_POSITION} (llama.cpp's "
                         f"positions are int32); thousands are where scaling matters")


def preflight(path, scaling: Optional[RopeScaling], n_tokens: int, position: Optional[int]) -> RopeView:
    """Everything that can be refused before any weights are read: the options, the file, the
    architecture and whether llama.cpp has a runtime setting for the scaling."""
    from .llama import llama_kwargs

    check_options(n_tokens, position)
    info = read_view(path)
    if info.arch not in forward.ARCHS:
        raise PyntkError(f"{path}: architecture {info.arch!r} is not supported by pyntk's reference "
                         f"forward pass (supported: {', '.join(forward.ARCHS)})")
    if scaling is not None:
        llama_kwargs(scaling, info)
    return info


def make_layout(n_vocab: int, n_tokens: int, position: int, *, bos: Optional[int] = None,
                seed: int = 0) -> Layout:
    """Far context, then n_tokens (bridge, query) pairs with queries spread over [P/4, P]."""
    k = CONTEXT_TOKENS
    check_options(n_tokens, position)
    rng = np.random.default_rng(seed)
    context = rng.integers(0, n_vocab, k)
    if bos is not None:
        context[0] = bos
    # from P down to P/4; queries may share a position, each being in a sequence of its own
    queries = np.round(np.linspace(position, position / 4, n_tokens)[::-1]).astype(np.int64)
    n = n_tokens
    tokens = np.concatenate([context, rng.integers(0, n_vocab, 2 * n)])
    positions = np.concatenate([np.arange(k), queries - 1, queries])
    visible = np.zeros((k + 2 * n, k + 2 * n), dtype=bool)
    visible[:k, :k] = np.tril(np.ones((k, k), dtype=bool))
    bridge, query = k + np.arange(n), k + n + np.arange(n)
    visible[bridge, bridge] = True
    visible[query, :k] = True
    visible[query, bridge] = True
    visible[query, query] = True
    return Layout(tokens, positions, visible, query, k)


def target_context(scaling: RopeScaling, info: RopeView) -> int:
    """The context a scaling is meant for: L0 times its factor (or alpha)."""
    l0 = scaling.original_context or info.original_context
    stretch = scaling.alpha if scaling.method == "ntk" else scaling.factor
    return round(l0 * stretch)


def default_position(scaling: RopeScaling, info: RopeView) -> int:
    # Twice the target context: a 1% base error turns the angles of the slow pairs, which carry
    # the attention to far keys, by a sizeable fraction of a radian only that far out.
    return 2 * target_context(scaling, info)


@dataclass(frozen=True)
class Metrics:
    max_abs: float  # largest |dlogit|
    mean_abs: float  # mean |dlogit| over tokens and vocabulary
    kl: float  # mean KL(reference || other) per token, in nats
    top1: float  # share of tokens whose most likely next token agrees


def compare(reference: np.ndarray, other: np.ndarray) -> Metrics:
    diff = np.abs(reference - other)
    p, q = _log_softmax(reference), _log_softmax(other)
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    top1 = reference.argmax(axis=-1) == other.argmax(axis=-1)
    return Metrics(float(diff.max()), float(diff.mean()), float(max(kl.mean(), 0.0)), float(top1.mean()))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Report:
    path: str
    scaling: str  # what llama.cpp ran
    reference: str  # what the numpy reference assumed
    file_settings: bool  # llama.cpp ran with the file's own rope settings
    tokens: int
    positions: tuple  # (first, last) query position
    context_tokens: int
    rounding: str  # how llama.cpp rounds matrix-product inputs for this model
    layers: str  # which layers run the scaling (sliding-window layers, factor tensors)
    mode: str  # the rope mode the reference assumed
    measured: Metrics  # llama.cpp vs reference
    noise: Metrics  # reference with llama.cpp's rounding vs reference
    thresholds: dict
    neighbours: dict  # "base x0.99"/"base x1.01": KL of llama.cpp from that scaling, its
    #                   separation from the claim (exact vs exact) and whether it counted
    passed: bool
    seconds: dict

    def to_dict(self) -> dict:
        return asdict(self)


def neighbours_of(claimed: RopeScaling) -> Dict[str, RopeScaling]:
    """The claim with its base 1% lower and higher: llama.cpp must be closer to the claim."""
    return {f"base x{1 + d:g}": claimed.replace(base=claimed.base * (1 + d)) for d in (-NEIGHBOUR, NEIGHBOUR)}


def reference_passes(claimed: RopeScaling) -> List[Tuple[RopeScaling, bool]]:
    """What the reference computes (scaling, with ggml's rounding): exact, rounded, and the two
    neighbours, in one read of the weights."""
    return [(claimed, False), (claimed, True)] + [(s, False) for s in neighbours_of(claimed).values()]


def layers_summary(model: forward.Model, rotations) -> str:
    """The layers' ropes in a line: which run the scaling, which keep their own (llama.cpp's
    per-layer rules), which factor tensors apply."""
    view = model.rope
    # window layers run the scaling too where llama.cpp scales them (gemma2 after gguf-set)
    kept = [i in view.window_layers and r.scaling.method == "none" for i, r in enumerate(rotations)]
    glob = [r for r, k in zip(rotations, kept) if not k]
    window = [r for r, k in zip(rotations, kept) if k]
    text = f"{len(glob)} of {len(rotations)} layers run it"
    factors = sorted({r.factors for r in glob if r.factors})
    if factors:
        text += f", divided by {', '.join(f.removesuffix('.weight') for f in factors)}"
    if window:
        bases = ", ".join(f"{b:g}" for b in sorted({r.scaling.base for r in window}))
        text += (f"; {len(window)} sliding-window layers (window {view.sliding_window} tokens) keep "
                 f"base {bases}, unscaled")
    return text


def _describe(s: RopeScaling) -> str:
    return s.describe() if s.method == "ntk" else f"{s.describe()}, base {s.base:g}"


def _bos(path: str) -> Optional[int]:
    bos = GGUFFile(path).value("tokenizer.ggml.bos_token_id")
    return bos if isinstance(bos, int) else None


def llama_logits(path: str, scaling: Optional[RopeScaling], layout: Layout,
                 threads: Optional[int] = None, n_ctx: Optional[int] = None) -> np.ndarray:
    """The queries' logits from llama.cpp, decoded with the layout's positions and visibility,
    in a context of ``n_ctx`` cells (default: just the layout's tokens)."""
    from .llama import Session

    k, n = layout.context, len(layout.queries)
    seqs = 1 + np.arange(n)
    # One thread: ~100 tokens is too little work to share, and spare threads only spin.
    with Session(path, scaling, n_ctx=n_ctx or len(layout.tokens), n_seq=n + 1,
                 threads=threads or 1) as s:
        s.decode(layout.tokens[:k], layout.positions[:k], 0)
        s.decode(layout.tokens[k:k + n], layout.positions[k:k + n], seqs)
        for seq in seqs:
            s.copy_sequence(0, int(seq))
        return s.decode(layout.tokens[k + n:], layout.positions[k + n:], seqs).astype(np.float64)


def verify(path, scaling: Optional[RopeScaling] = None, *, reference: Optional[RopeScaling] = None,
           tokens: int = 32, position: Optional[int] = None, seed: int = 0,
           threads: Optional[int] = None, context: Optional[int] = None,
           reference_mode: Optional[str] = None) -> Report:
    """Run ``path`` in llama.cpp and in the numpy reference and compare the logits.

    scaling    what llama.cpp runs: None keeps the file's own rope settings
    reference  what the reference assumes; default: the same as llama.cpp (the file's scaling as
               llama.cpp reads it, when ``scaling`` is None). Tests pass a different one on purpose.
    tokens     query tokens compared (1..255)
    position   the farthest query position; default twice the context the scaling targets
    context    llama.cpp's context size (KV cells; at least the tokens laid out): it decides
               which LongRoPE factors llama.cpp applies. Default: just the tokens laid out
    reference_mode  the rope mode the reference assumes; default the architecture's (tests)
    """
    info = preflight(path, scaling, tokens, position)
    times = {}
    start = time.perf_counter()
    model = forward.load(path)
    claimed = reference or scaling or model.file_scaling()
    position = position or default_position(claimed, info)
    layout = make_layout(model.n_vocab, tokens, position, bos=_bos(model.path), seed=seed)
    n_ctx = max(context or 0, len(layout.tokens))
    rotations = model.rotations(claimed, n_ctx)
    times["load_reference"] = time.perf_counter() - start

    start = time.perf_counter()
    llama = llama_logits(model.path, scaling, layout, threads, n_ctx)
    times["llama_cpp"] = time.perf_counter() - start
    start = time.perf_counter()
    near = neighbours_of(claimed)
    exact, rounded, *others = model.run(layout.tokens, layout.positions, reference_passes(claimed),
                                        layout.visible, rows=layout.queries, mode=reference_mode, n_ctx=n_ctx)
    times["reference"] = time.perf_counter() - start

    measured, noise = compare(exact, llama), compare(exact, rounded)
    thresholds = {name: max(FLOOR[name], NOISE_FACTOR * getattr(noise, name)) for name in FLOOR}
    passed = all(getattr(measured, name) <= limit for name, limit in thresholds.items())
    neighbours = {}
    for name, other in zip(near, others):
        separation = compare(exact, other).kl
        resolved = separation >= RESOLVED * max(noise.kl, FLOOR["kl"])
        kl = compare(other, llama).kl
        neighbours[name] = {"kl": kl, "separation": separation, "resolved": resolved}
        passed = passed and (kl > measured.kl or not resolved)
    q = layout.query_positions
    return Report(
        path=model.path, scaling=_describe(scaling or model.file_scaling()), reference=_describe(claimed),
        file_settings=scaling is None,
        tokens=len(q), positions=(int(q.min()), int(q.max())), context_tokens=layout.context,
        rounding=", ".join(model.roundings()), layers=layers_summary(model, rotations),
        mode=reference_mode or info.mode, measured=measured, noise=noise, thresholds=thresholds,
        neighbours=neighbours, passed=passed, seconds={k: round(v, 3) for k, v in times.items()},
    )


@dataclass(frozen=True)
class KernelReport:
    scaling: str
    mode: str
    shape: tuple  # (tokens, heads, head_dim) of the rotated array
    positions: tuple  # (first, last)
    kernel: str  # pyntk's active kernel
    pyntk_vs_ggml: float  # max |difference| of the rotated values
    pyntk_vs_exact: float  # max |error| against the float64 reference
    ggml_vs_exact: float
    bound_ratio: float  # max of |pyntk - ggml| / llama.cpp's float32 error bound, per value
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def pairs(x: np.ndarray, dims: int, mode: str) -> tuple:
    """The two members of each rotary pair: NORMAL (x[2i], x[2i+1]), NEOX (x[i], x[i + d/2])."""
    if mode == "neox":
        return x[..., :dims // 2], x[..., dims // 2:dims]
    return x[..., 0:dims:2], x[..., 1:dims:2]


def float32_bound(x: np.ndarray, positions: np.ndarray, scaling: RopeScaling,
                  mode: str = "normal") -> np.ndarray:
    """How far llama.cpp's float32 RoPE may stray from exact, per pair (tokens, heads, pairs):
    the angle error of forward.float32_angle_error times the pair's length."""
    length = np.hypot(*pairs(x, scaling.dims, mode)).astype(np.float64) * inv_freq(scaling)[1]
    return length * forward.float32_angle_error(scaling, positions)[:, None, :]


def verify_kernel(path, scaling: Optional[RopeScaling] = None, *, tokens: int = 32,
                  position: Optional[int] = None, seed: int = 0) -> KernelReport:
    """pyntk's rotation kernel against llama.cpp's ggml_rope_ext for the model's scaling, on
    random unit-variance heads shaped like the model's at the positions ``verify`` uses."""
    from . import ggml, rope

    info = preflight(path, None, tokens, position)
    mode = info.mode
    s = scaling or info.scaling_besides_factors()
    position = position or default_position(s, info)
    positions = make_layout(1, tokens, position).positions  # the positions verify() uses
    heads = info.head_count or 1
    x = np.random.default_rng(seed).standard_normal((len(positions), heads, s.dims)).astype(np.float32)
    ours = rope.rotate(x, positions, s, mode=mode, out=np.empty_like(x))
    theirs = ggml.ggml_rope(x, positions, mode=mode, **ggml.ggml_args(s, int(positions.max()) + 1))
    exact = reference_rotate(x, positions, s, mode=mode)
    diff = np.abs(ours.astype(np.float64) - theirs)
    pair_diff = np.maximum(*pairs(diff, s.dims, mode))
    # pyntk's own error (angles in double, one float32 rounding of the result) rides on top
    bound = float32_bound(x, positions, s, mode) + 4 * EPS32 * np.abs(x).max() * inv_freq(s)[1]
    ratio = float((pair_diff / bound).max())
    return KernelReport(
        scaling=_describe(s), mode=mode, shape=tuple(x.shape),
        positions=(int(positions.min()), int(positions.max())), kernel=rope.kernel(),
        pyntk_vs_ggml=float(diff.max()), pyntk_vs_exact=float(np.abs(ours - exact).max()),
        ggml_vs_exact=float(np.abs(theirs - exact).max()), bound_ratio=ratio, passed=ratio <= 1.0,
    )

