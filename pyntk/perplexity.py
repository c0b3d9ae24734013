"""Perplexity of a GGUF model under several RoPE scalings, through llama.cpp, streamed.

How it measures (llama.cpp's `llama-perplexity` convention, except that it scores one token
more per window: the one right after the window's midpoint):
- the text's first ``span`` tokens (default: the longest length asked for) are cut into
  non-overlapping windows of each length, so every length reads the same stretch of text;
- each window is decoded from an empty KV cache at positions 0 .. n-1; when the model's
  tokenizer adds a BOS token, the window's first token is replaced by it, as llama-perplexity does;
- ``score="half"`` (default) scores the second half of every window, so each scored token sees at
  least half a window of context; ``score="all"`` scores every token but the first;
- perplexity = exp(mean negative log-likelihood over all scored tokens of all windows).

Memory: llama.cpp is asked for logits only on the rows that are scored, one batch of at most
``n_batch`` rows at a time, and each row is reduced at once to its target token's
log-probability; nothing of size n_ctx x n_vocab is ever held, by llama.cpp or by us.

Dynamic NTK runs each window with the base its formula gives for the window's full length, as
Hugging Face does when a whole sequence goes through the model in one forward pass. A candidate
with a :class:`~pyntk.dynamic.DynamicPolicy` (`pyntk ppl --method dynamic-yarn`) runs each window
as a request of its length: in its bucket's context, with the method set up for that bucket.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import PyntkError
from .dynamic import DynamicPolicy
from .llama import Model
from .scaling import RopeScaling

SCORES = ("half", "all")


@dataclass(frozen=True)
class Candidate:
    """A labelled scaling to measure, e.g. ("ntk", RopeScaling(method="ntk", alpha=2.9, ...)).

    With a ``policy`` the scaling depends on the length: ``scaling`` is the one at the target.
    """

    label: str
    scaling: RopeScaling
    policy: Optional[DynamicPolicy] = None

    def at(self, length: int) -> RopeScaling:
        """What a window of ``length`` tokens runs with."""
        return self.policy.scaling_for(length) if self.policy else self.scaling


@dataclass(frozen=True)
class Result:
    label: str
    scaling: RopeScaling
    ctx: int
    ppl: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # scored tokens
    windows: int
    seconds: float
    dynamic: Optional[str] = None  # the policy, when the scaling (then the one at ctx) varies by length

    def parameters(self) -> str:
        return self.dynamic or self.scaling.describe()

    def to_dict(self) -> dict:
        return {"label": self.label, "method": self.scaling.method, "summary": self.scaling.describe(),
                "dynamic": self.dynamic, "scaling": self.scaling.to_dict(), "ctx": self.ctx,
                "ppl": self.ppl, "nll": self.nll, "tokens_scored": self.tokens, "windows": self.windows,
                "seconds": self.seconds}


def read_text(path: str) -> str:
    """A text to measure on (`pyntk ppl --text`, `pyntk plan --measure --text`), as UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise PyntkError(f"{path}: not UTF-8 text; convert it (e.g. iconv -t utf-8)") from None
    except IsADirectoryError:
        raise PyntkError(f"--text {path}: is a folder; give a text file") from None
    except OSError as e:
        raise PyntkError(f"--text {path}: {e.strerror.lower()}; check the path") from None


def first_scored(length: int, score: str) -> int:
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    return length // 2 if score == "half" else 1


def plan_windows(n_tokens: int, lengths: Sequence[int], span: Optional[int] = None) -> Tuple[int, Dict[int, int]]:
    """(span, windows per length): how much of the text is read and how it is cut."""
    if not lengths:
        raise ValueError("give at least one context length")
    for n in lengths:
        if isinstance(n, bool) or int(n) != n or n < 4:
            raise ValueError(f"context lengths must be whole numbers of at least 4 tokens, got {n!r}")
    span = span or max(lengths)
    if span < max(lengths):
        raise ValueError(f"span {span} is shorter than the longest context {max(lengths)}")
    if n_tokens < span:
        raise PyntkError(f"the text has {n_tokens} tokens but the run reads {span} (the longest context "
                         f"or the target); give a longer text or smaller context lengths")
    return span, {n: span // n for n in lengths}


def evaluate(model: Model, tokens: np.ndarray, lengths: Sequence[int],
             candidates: Sequence[Candidate], *, score: str = "half", span: Optional[int] = None,
             flash_attn: bool = False,
             progress: Optional[Callable[[int], None]] = None) -> List[Result]:
    """Perplexity for every (length, candidate), in that order; ``progress(n)`` after each window
    with the number of tokens it decoded.

    A candidate that runs exactly like one already measured at that length (Dynamic NTK within
    the training context is unscaled RoPE) reuses that measurement.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    span, windows = plan_windows(len(tokens), lengths, span)
    bos = model.bos()
    results: List[Result] = []
    done: Dict[tuple, Result] = {}
    for n in lengths:
        first = first_scored(n, score)
        for cand in candidates:
            scaling = cand.at(n)
            dynamic = cand.policy.describe() if cand.policy else None
            key = (n, model.runs_as(scaling, n))
            if key in done:
                results.append(replace(done[key], label=cand.label, scaling=scaling, seconds=0.0,
                                       dynamic=dynamic))
                if progress:
                    progress(n * windows[n])
                continue
            t0 = time.perf_counter()
            total, count = 0.0, 0
            # windows are decoded forward only, so sliding-window layers need only their window's
            # cache, as llama-perplexity runs them: at 64k on Gemma 3 attention over 3 layers, not 18
            with model.context(n, scaling, flash_attn=flash_attn, swa_full=False) as ctx:
                for w in range(windows[n]):
                    window = tokens[w * n:(w + 1) * n].copy()
                    if bos is not None:
                        window[0] = bos
                    lp = ctx.logprobs(window, first)
                    total -= float(lp.sum())
                    count += lp.size
                    ctx.clear()
                    if progress:
                        progress(n)
            nll = total / count
            result = Result(cand.label, scaling, n, math.exp(nll), nll, count, windows[n],
                            time.perf_counter() - t0, dynamic)
            done[key] = result
            results.append(result)
    return results


def describe_windows(span: int, windows: Dict[int, int], score: str) -> str:
    scored = "the second half of each window scored" if score == "half" else "every token but the first scored"
    cuts = ", ".join(f"{k} x {n}" for n, k in windows.items())
    return (f"the text's first {span} tokens cut into non-overlapping windows ({cuts}), "
            f"each decoded from position 0, {scored}")


def format_table(results: Sequence[Result]) -> str:
    """Perplexity per label (rows) and length (columns), with each label's parameters."""
    lengths = sorted({r.ctx for r in results})
    labels: List[str] = []
    for r in results:
        if r.label not in labels:
            labels.append(r.label)
    cell = {(r.label, r.ctx): r for r in results}
    summary = {r.label: r.parameters() for r in results}
    lw = max(len("method"), *map(len, labels))
    sw = max(len("parameters"), *map(len, summary.values()))
    lines = [f"{'method':<{lw}}  {'parameters':<{sw}}" + "".join(f"  {n:>9}" for n in lengths)]
    for label in labels:
        row = f"{label:<{lw}}  {summary[label]:<{sw}}"
        for n in lengths:
            r = cell.get((label, n))
            row += f"  {format_ppl(r.ppl) if r else '-':>9}"
        lines.append(row)
    return "\n".join(lines)


def format_ppl(ppl: float) -> str:
    return f"{ppl:.3f}" if ppl < 1000 else f"{ppl:.4g}"


def plot(results: Sequence[Result], path, *, training_context: int, title: str = "") -> None:
    """Perplexity against context length, one line per label, the training context marked."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise PyntkError("plotting needs matplotlib: pip install 'pyntk[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels: List[str] = []
    for r in results:
        if r.label not in labels:
            labels.append(r.label)
    for label in labels:
        points = sorted((r.ctx, r.ppl) for r in results if r.label == label)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.axvline(training_context, color="gray", linestyle="--", linewidth=1)
    ax.annotate(f"training context {training_context}", (training_context, 0.98),
                xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top",
                fontsize=8, color="gray")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 40, not 4 x 10^1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.margins(x=0.08)
    lengths = sorted({r.ctx for r in results})
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(n) for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity (log scale)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
