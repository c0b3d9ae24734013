"""How long a context a scaling supports, and which method and parameters reach a target context.

Criterion (Liu et al. 2023, "Scaling Laws of RoPE-based Extrapolation", arXiv:2310.05209; see
docs/PLAN.md): the pairs that turn at least once within the training context L0 were trained on
every angle; there are d_extra/2 of them, d_extra = 2*ceil((d/2) * log_b(L0 / 2pi)) (the
"critical dimension"). Every other pair saw only an arc, so a scaling stays in distribution at
T tokens while each such pair turns no further over T than it did over L0. The first of them,
pair d_extra/2, binds: static NTK with base b' supports T = L0 * (b'/b)^(d_extra/d).
Methods that interpolate (linear, ntk-by-parts, yarn, llama3) are designed for factor * L0;
Dynamic NTK rescales itself per length and is given the same factor * L0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .errors import PyntkError
from .rope import inv_freq
from .scaling import METHODS, RopeScaling
from .spectrum import TOL, full_interpolation, pair_table


def critical_dims(dims: int, base: float, training_context: int) -> int:
    """d_extra: the rotary dimensions whose pairs turn fully within the training context."""
    turns = (dims / 2) * math.log(training_context / (2 * math.pi)) / math.log(base)
    return max(2, min(dims, 2 * math.ceil(turns)))


def supported_context(scaling: RopeScaling, training_context: int) -> int:
    """The longest context the scaling keeps in distribution, in tokens (never below L0)."""
    if scaling.method == "none":
        return training_context
    if scaling.method == "ntk":
        d_extra = critical_dims(scaling.dims, scaling.base, training_context)
        # Relative to the unscaled bound, so that alpha 1 gives exactly L0.
        gain = (scaling.ntk_base / scaling.base) ** (d_extra / scaling.dims)
        return int(math.floor(training_context * gain))
    return int(math.floor(training_context * scaling.factor))


def alpha_for_context(target: int, dims: int, base: float, training_context: int) -> float:
    """The smallest NTK alpha whose supported context reaches ``target`` tokens."""
    if target <= training_context:
        return 1.0
    d_extra = critical_dims(dims, base, training_context)
    base_gain = (target / training_context) ** (dims / d_extra)
    return base_gain ** ((dims - 2) / dims)


# --- choosing a method for a target context ------------------------------------------------------

# The methods `pyntk plan` and `pyntk ppl` compare by default, in the order they are shown.
COMPARED = ("none", "linear", "ntk", "dynamic", "yarn")


def scaling_for(method: str, target: int, *, dims: int, base: float, training_context: int,
                **params) -> RopeScaling:
    """``method`` set up to reach ``target`` tokens; ``params`` (alpha=, factor=, ...) override.

    ntk gets the criterion's alpha; every other method but none the factor target / L0 (at least 1, as
    Hugging Face sizes linear, dynamic and yarn), plus L0 where the method needs it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    kw: dict = dict(method=method, base=base, dims=dims)
    if method == "ntk":
        kw["alpha"] = alpha_for_context(target, dims, base, training_context)
    elif method != "none":
        kw["factor"] = max(1.0, target / training_context)
    if method not in ("none", "ntk", "linear"):
        kw["original_context"] = training_context
    kw.update(params)
    return RopeScaling(**kw)


def static_equivalent(scaling: RopeScaling, length: int) -> RopeScaling:
    """The static scaling llama.cpp runs for a sequence of ``length`` tokens.

    Dynamic NTK becomes static NTK with the base its formula gives for ``length`` (unscaled up to
    the training context); every other method is already static and comes back unchanged.
    """
    if scaling.method != "dynamic":
        return scaling
    # Static NTK divides the lowest frequency by exactly alpha: read alpha off that pair.
    alpha = full_interpolation(scaling, seq_len=length)
    if length <= scaling.original_context or alpha <= 1.0:
        return RopeScaling(method="none", base=scaling.base, dims=scaling.dims)
    return RopeScaling(method="ntk", base=scaling.base, dims=scaling.dims, alpha=alpha)


def acts_unscaled(scaling: RopeScaling, length: int) -> bool:
    """Whether ``scaling`` runs a sequence of ``length`` tokens exactly as unscaled RoPE would."""
    plain = RopeScaling(method="none", base=scaling.base, dims=scaling.dims)
    inv, attention = inv_freq(static_equivalent(scaling, length))
    return attention == 1.0 and bool(np.array_equal(inv, inv_freq(plain)[0]))


def pair_rows(scaling: RopeScaling, training_context: int, target: int) -> List[dict]:
    """spectrum.pair_table at ``target`` tokens, plus the criterion per pair.

    A pair is in distribution at ``target`` when it turned fully within the training context
    (every angle was trained) or when, scaled, it turns no further over ``target`` tokens than
    it did over the training context. Adds ``turns_at_target`` and ``in_distribution``.
    """
    rows = pair_table(scaling, seq_len=target if scaling.method == "dynamic" else None,
                      context=training_context)
    for r in rows:
        trained = r["turns_in_context"]
        r["turns_at_target"] = target / r["wavelength_after"]
        r["in_distribution"] = bool(trained >= 1.0 or r["turns_at_target"] <= trained * (1 + TOL))
    return rows


@dataclass(frozen=True)
class Option:
    """One method set up for a target context, and what the criterion says of it."""

    scaling: RopeScaling
    supported_context: int
    pairs_out_of_distribution: int
    short_inputs_unchanged: bool  # inputs within the training context run exactly as unscaled

    def to_dict(self) -> dict:
        return {"method": self.scaling.method, "summary": self.scaling.describe(),
                "scaling": self.scaling.to_dict(), "supported_context": self.supported_context,
                "pairs_out_of_distribution": self.pairs_out_of_distribution,
                "short_inputs_unchanged": self.short_inputs_unchanged}


def option(scaling: RopeScaling, training_context: int, target: int) -> Option:
    rows = pair_rows(scaling, training_context, target)
    return Option(scaling, supported_context(scaling, training_context),
                  sum(not r["in_distribution"] for r in rows),
                  acts_unscaled(scaling, training_context))


@dataclass(frozen=True)
class Recommendation:
    target: int
    training_context: int
    critical_dims: int
    choice: Option
    options: Tuple[Option, ...]  # every method of COMPARED, set up for the target
    reason: str

    @property
    def scaling(self) -> RopeScaling:
        return self.choice.scaling

    def to_dict(self) -> dict:
        return {"target": self.target, "training_context": self.training_context,
                "critical_dims": self.critical_dims, "recommended": self.choice.to_dict(),
                "reason": self.reason, "options": [o.to_dict() for o in self.options]}


def recommend(target: int, *, dims: int, base: float, training_context: int) -> Recommendation:
    """The method and parameters pyntk recommends for ``target`` tokens (gguf-set --ctx writes the
    same alpha, from alpha_for_context).

    Within the training context nothing is needed. Beyond it: static NTK with the smallest alpha
    whose every pair stays in distribution at the target (the critical-dimension criterion).
    It needs no fine-tuning, keeps the high-frequency pairs that resolve neighbouring tokens
    exactly as trained, and is only a new base, so llama.cpp and every runtime can apply it from
    the file. Interpolating methods also stay in distribution but compress the high frequencies
    (linear) or were designed for fine-tuned models (yarn); Dynamic NTK needs a runtime that
    recomputes the base per sequence (pyntk.llama.DynamicNTK for llama-cpp-python).
    """
    if isinstance(target, bool) or int(target) != target or target < 1:
        raise ValueError(f"target context must be a positive whole number of tokens, got {target!r}")
    L0 = training_context
    common = dict(dims=dims, base=base, training_context=L0)
    options = tuple(option(scaling_for(m, target, **common), L0, target) for m in COMPARED)
    by_method = {o.scaling.method: o for o in options}
    d_extra = critical_dims(dims, base, L0)
    if target <= L0:
        choice = by_method["none"]
        reason = f"{target} tokens fit the training context ({L0}); no scaling is needed"
    else:
        choice = by_method["ntk"]
        reason = (f"the first {d_extra // 2} of {dims // 2} pairs turn fully within {L0} tokens; "
                  f"alpha {choice.scaling.alpha:.4g} slows pair {d_extra // 2} (the critical "
                  f"dimension, Liu et al. 2023) so that over {target} tokens it turns no further "
                  f"than it did in training, and leaves the fast pairs almost as trained")
    return Recommendation(target, L0, d_extra, choice, options, reason)


def measure_candidates(rec: Recommendation) -> List[Tuple[str, RopeScaling]]:
    """What `pyntk plan --measure` compares: the recommendation, NTK with a third less and half
    again as much alpha (does the criterion's alpha sit at the optimum?), and the interpolating
    methods llama.cpp can also apply from the file (linear, yarn)."""
    choice = rec.scaling
    if choice.method != "ntk":
        return [(f"{choice.method} (recommended)", choice)]
    by_method = {o.scaling.method: o.scaling for o in rec.options}
    return [
        ("ntk (recommended)", choice),
        ("ntk, alpha x2/3", choice.replace(alpha=max(1.0, choice.alpha * 2 / 3))),
        ("ntk, alpha x3/2", choice.replace(alpha=choice.alpha * 3 / 2)),
        ("linear", by_method["linear"]),
        ("yarn", by_method["yarn"]),
    ]


def plot_spectrum(rec: Recommendation, path, *, title: str = "") -> None:
    """Per-pair wavelength before and after each method, one panel per method, with the training
    and target contexts marked and the pairs out of distribution at the target circled."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PyntkError("plotting needs matplotlib: pip install 'pyntk[plot]'") from None
    options = rec.options
    fig, axes = plt.subplots(1, len(options), figsize=(3.2 * len(options), 3.6), sharey=True)
    for ax, opt in zip(axes, options):
        rows = pair_rows(opt.scaling, rec.training_context, rec.target)
        pairs = [r["pair"] for r in rows]
        ax.plot(pairs, [r["wavelength_before"] for r in rows], color="gray", label="before")
        ax.plot(pairs, [r["wavelength_after"] for r in rows], color="C0", label="after")
        bad = [r for r in rows if not r["in_distribution"]]
        if bad:
            ax.scatter([r["pair"] for r in bad], [r["wavelength_after"] for r in bad], s=30,
                       facecolors="none", edgecolors="C3", label="out of distribution")
        ax.axhline(rec.training_context, color="C2", linestyle="--", linewidth=1, label="training context")
        ax.axhline(rec.target, color="C1", linestyle=":", linewidth=1.2, label="target context")
        ax.axvline(rec.critical_dims // 2, color="black", linewidth=0.5, alpha=0.4)
        ax.set_yscale("log")
        mark = " (recommended)" if opt is rec.choice else ""
        # "ntk alpha=8.57 (base ...)" -> "ntk alpha=8.57"; L0 is in the figure's title
        short = re.sub(r" original_context=\d+| \(.*\)", "", opt.scaling.describe())
        ax.set_title(short + mark, fontsize=9)
        ax.set_xlabel("pair i (critical pair marked)", fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("wavelength (tokens)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title or f"RoPE spectrum for {rec.target} tokens "
                          f"(training context {rec.training_context})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
