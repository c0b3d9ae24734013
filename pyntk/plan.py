"""Which method and parameters pyntk recommends for a target context: the best measured, guarded
by the criterion of how long a context a scaling keeps in distribution (docs/PLAN.md).

Criterion (Liu et al. 2023, "Scaling Laws of RoPE-based Extrapolation", arXiv:2310.05209): the
pairs that turn at least once within the training context L0 were trained on every angle; there
are d_extra/2 of them, d_extra = 2*ceil((d/2) * log_b(L0 / 2pi)) (the "critical dimension").
Every other pair saw only an arc, so a scaling stays in distribution at T tokens while each such
pair turns no further over T than it did over L0. The first of them, pair d_extra/2, binds: static
NTK with base b' supports T = L0 * (b'/b)^(d_extra/d). Methods that interpolate (linear,
ntk-by-parts, yarn, llama3) are designed for factor * L0; Dynamic NTK rescales itself per length
and is given the same factor * L0.

Rule: among the methods the runtime can apply, the one whose setup for the target measured best at
the target across every measurement in pyntk/evidence.json (the smallest worst-case excess over the
best setup measured), provided the criterion keeps all of its pairs in distribution at the target.

Frequencies come from pyntk.reference (numpy float64), not the compiled core: gguf-set, info and
args use this module and run without the core.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from . import evidence
from .errors import PyntkError
from .llamacpp import FILE_METHODS, RopeView, check_context, to_llama, with_context
from .reference import inv_freq
from .scaling import METHODS, USES, RopeScaling, needs_context
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


# --- every method set up for a target context ----------------------------------------------------

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
    elif "factor" in USES[method]:
        kw["factor"] = max(1.0, target / training_context)
    if needs_context(method):
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


# --- the recommendation --------------------------------------------------------------------------

# Where a scaling will run. "file": llama.cpp from the GGUF file alone, so what gguf-set writes;
# "freq_base": a runtime that reads only rope.freq_base (static NTK is nothing but a new base);
# "pyntk": llama.cpp driven by pyntk.dynamic, which adds dynamic scaling (pyntk.dynamic.Dynamic).
RUNTIMES = ("file", "freq_base", "pyntk")

# "dynamic-METHOD": METHOD set up for each request's length, served through pyntk.dynamic.Dynamic
# (`pyntk ppl --method dynamic-yarn`); at the target it runs METHOD set up by scaling_for.
DYNAMIC = "dynamic-"
# The dynamic-METHOD setups the pyntk runtime offers (measured beside the methods).
PER_REQUEST = ("dynamic-yarn",)

# When to prefer a setup that did not come first.
WHEN = {
    "ntk": "for a runtime that reads only rope.freq_base: static NTK is nothing but a new base",
    "yarn": "for a runtime that applies rope.scaling.type yarn from the file (llama.cpp and the "
            "runtimes built on it)",
    "ntk-by-parts": "for a runtime that applies yarn, when YaRN's attention temperature does not "
                    "suit the model (measure with --measure)",
    "dynamic": "when serving through pyntk.dynamic.Dynamic(model, 'dynamic'): inputs within the "
               "training context run unscaled",
    "dynamic-yarn": "when serving through pyntk (pyntk serve, pyntk.dynamic.Dynamic(model, "
                    "'yarn')): YaRN set up for each request's length, so inputs within the training "
                    "context run unscaled",
    "linear": "for a model fine-tuned with Position Interpolation at this factor",
}

# Differences in worst excess at the target smaller than this are ties, settled by the cost
# inside the training context: the same setup measured on two machines differed by 0.4%
# (docs/BENCH_PPL.md).
TIE = 0.005


def per_request_method(label: str) -> Optional[str]:
    """METHOD of a "dynamic-METHOD" label, else None."""
    return label[len(DYNAMIC):] if label.startswith(DYNAMIC) else None


def served(label: str) -> bool:
    """Whether a setup is served per request by pyntk.dynamic.Dynamic rather than written into the
    file: Dynamic NTK and every dynamic-METHOD."""
    return label == "dynamic" or per_request_method(label) is not None


def runtime_setups(runtime: str) -> Tuple[str, ...]:
    """The setups (method names, and the PER_REQUEST labels) a runtime can run."""
    setups = {"file": tuple(FILE_METHODS), "freq_base": ("none", "ntk"),
              "pyntk": (*FILE_METHODS, "dynamic", *PER_REQUEST)}
    if runtime not in setups:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    return setups[runtime]


def setup_for(label: str, target: int, *, dims: int, base: float, training_context: int) -> RopeScaling:
    """The scaling a setup runs at ``target`` tokens when set up for them."""
    return scaling_for(per_request_method(label) or label, target, dims=dims, base=base,
                       training_context=training_context)


def ranking(labels) -> List[Tuple[str, float, float]]:
    """(label, worst excess at the target, worst cost inside the training context) of the setups
    every measurement covers, best first: the smallest worst excess at the target, ties (within
    TIE) going to the smaller cost inside the training context."""
    scores = evidence.worst(labels)
    out = []
    while scores:
        floor = min(excess for excess, _ in scores.values())
        pick = min((label for label, (excess, _) in scores.items() if excess <= floor + TIE),
                   key=lambda label: (scores[label][1], scores[label][0]))
        out.append((pick, *scores.pop(pick)))
    return out


class RunnerUp(NamedTuple):
    scaling: RopeScaling
    when: str  # when to prefer it to the recommendation


@dataclass(frozen=True)
class Pick:
    """A setup chosen for a target: its label (a method, or a dynamic-METHOD) and what the
    criterion says of the scaling it runs at the target."""

    label: str
    option: Option

    @property
    def scaling(self) -> RopeScaling:
        return self.option.scaling

    def to_dict(self) -> dict:
        return {"label": self.label, **self.option.to_dict(), "when": WHEN.get(self.label, "")}


@dataclass(frozen=True)
class Recommendation:
    target: int
    training_context: int
    critical_dims: int
    runtime: str
    choice: Pick
    runner_up: Optional[Pick]  # the next setup the runtime runs
    elsewhere: Tuple[Tuple[str, Pick], ...]  # (runtime, its first choice) where that differs
    reason: str  # one line, with the numbers it rests on
    options: Tuple[Option, ...]  # every method of COMPARED, set up for the target
    ranked: Tuple[Tuple[str, float, float], ...]  # ranking() of the runtime's setups
    nearest: Optional[evidence.Measurement]  # the measurement the reason quotes

    @property
    def scaling(self) -> RopeScaling:
        return self.choice.scaling

    def to_dict(self) -> dict:
        return {"target": self.target, "training_context": self.training_context,
                "critical_dims": self.critical_dims, "runtime": self.runtime,
                "recommended": self.choice.to_dict(), "reason": self.reason,
                "runner_up": self.runner_up.to_dict() if self.runner_up else None,
                "elsewhere": {runtime: pick.to_dict() for runtime, pick in self.elsewhere},
                "ranking": [{"label": label, "worst_excess_at_target": excess,
                             "worst_cost_inside_training_context": cost}
                            for label, excess, cost in self.ranked],
                "evidence": evidence_rows(self.nearest) if self.nearest else None,
                "options": [o.to_dict() for o in self.options]}


def evidence_rows(m: evidence.Measurement) -> dict:
    """One measurement as `pyntk plan` quotes it."""
    return {"model": m.model, "text": m.text, "target": m.target, "training_context": m.training_context,
            "source": m.source, "training_source": m.training_source,
            "setups": [{"label": s.label, "summary": s.scaling.describe(), "ppl": s.ppl,
                        "excess_at_target": m.excess(s), "ppl_training": s.ppl_training,
                        "cost_inside_training_context": m.cost(s)} for s in m.setups]}


def _check_target(target) -> None:
    if isinstance(target, bool) or int(target) != target or target < 1:
        raise ValueError(f"target context must be a positive whole number of tokens, got {target!r}")
    # gguf-set and args refuse such a context: recommending a setup for it would be advice no
    # command of pyntk accepts
    check_context(target)


def _picks(runtime: str, target: int, common: dict) -> Tuple[List[Pick], list]:
    """The runtime's setups in ranking() order that keep every pair in distribution at the target."""
    ranked = ranking(runtime_setups(runtime))
    picks = [Pick(label, option(setup_for(label, target, **common), common["training_context"], target))
             for label, _, _ in ranked]
    return [p for p in picks if p.option.pairs_out_of_distribution == 0], ranked


def recommend(target: int, *, dims: int, base: float, training_context: int,
              runtime: str = "file") -> Recommendation:
    """The setup pyntk recommends for ``target`` tokens on ``runtime``.

    Within the training context nothing is needed. Beyond it: the first of the runtime's setups
    in ranking() order (from every measurement in pyntk/evidence.json) that the criterion keeps in
    distribution at the target, set up for the target as it was measured; the next is the
    runner-up, and each other runtime's first choice, where it differs, is listed too.
    """
    _check_target(target)
    L0 = training_context
    common = dict(dims=dims, base=base, training_context=L0)
    options = tuple(option(scaling_for(m, target, **common), L0, target) for m in COMPARED)
    d_extra = critical_dims(dims, base, L0)
    picks, ranked = _picks(runtime, target, common)
    if target <= L0:
        choice = Pick("none", options[COMPARED.index("none")])
        reason = f"{target} tokens fit the training context ({L0}); no scaling is needed"
        return Recommendation(target, L0, d_extra, runtime, choice, None, (), reason, options,
                              tuple(ranked), None)
    if not picks:
        raise PyntkError(f"no setup the {runtime!r} runtime runs is both measured (pyntk/evidence.json) "
                         f"and in distribution at {target} tokens; measure on your own text with "
                         f"`pyntk plan MODEL --ctx {target} --measure --text FILE`")
    choice, runner = picks[0], (picks[1] if len(picks) > 1 else None)
    elsewhere = []
    for other in RUNTIMES:
        first = _picks(other, target, common)[0][:1] if other != runtime else []
        if first and first[0].label not in (choice.label, runner.label if runner else None):
            elsewhere.append((other, first[0]))
    m = evidence.nearest(target, dims, base, L0)
    reason = _reason(choice, runner, m, dict((k, v) for k, v, _ in ranked), target)
    return Recommendation(target, L0, d_extra, runtime, choice, runner, tuple(elsewhere), reason,
                          options, tuple(ranked), m)


def _reason(choice: Pick, runner: Optional[Pick], m: evidence.Measurement, worst: dict,
            target: int) -> str:
    name = choice.label
    n = len(evidence.measurements())
    standing = ("measured best at the target" if worst[name] <= TIE else
                f"measured within {worst[name]:.1%} of the best at the target")
    mine = m.setup(name)
    # the comparison that says most: against the best when the choice was not, else the runner-up
    best = min((s for s in m.setups if s.label != name), key=lambda s: s.ppl)
    other = best if best.ppl < mine.ppl else (m.setup(runner.label) if runner else None)
    quote = f"{name} {mine.ppl:.2f}"
    cost = f"{name} {m.cost(mine):+.1%}"
    if other is not None:
        if other is best and best.ppl < mine.ppl:
            quote += f" ({m.excess(mine):+.1%} against the best, {other.label} {other.ppl:.2f})"
        else:
            quote += f", {other.label} {other.ppl:.2f} ({other.ppl / mine.ppl - 1:+.1%})"
        cost += f", {other.label} {m.cost(other):+.1%}"
    return (f"{name} {standing} in {'all ' if n > 1 else ''}{n} measurement{'s' if n > 1 else ''} "
            f"pyntk has, and keeps every pair in distribution at {target}; nearest: {m.model} on "
            f"{m.text} at {m.target} tokens ({m.factor:g}x): {quote}; inside the training context "
            f"({m.training_context}): {cost}")


def recommended_scaling(dims: int, base: float, training_context: int, target: int, *,
                        runtime: str = "file") -> Tuple[RopeScaling, str, Optional[RunnerUp]]:
    """What `gguf-set --ctx` writes and `pyntk plan` prints: (scaling, the one-line reason,
    the runner-up with when to prefer it, or None)."""
    rec = recommend(target, dims=dims, base=base, training_context=training_context, runtime=runtime)
    runner = RunnerUp(rec.runner_up.scaling, WHEN[rec.runner_up.label]) if rec.runner_up else None
    return rec.scaling, rec.reason, runner


# --- the recommendation as command-line options, and the layers it reaches ---------------------------

def cli_options(**values) -> List[str]:
    """``--name value`` for each value that is not None (underscores become dashes), every number
    as short as it can be while still the same number ("2", not "2.0"), so a printed command
    repeats the values exactly."""
    out = []
    for name, value in values.items():
        if value is None:
            continue
        text = str(value)
        if isinstance(value, float):
            text = f"{value:g}" if float(f"{value:g}") == value else repr(value)
        out += ["--" + name.replace("_", "-"), text]
    return out


def scaling_options(scaling: RopeScaling, target: int) -> List[str]:
    """The scaling options (gguf-set's, args') that give ``scaling`` and a context of ``target``
    tokens: the method (implied by --alpha for ntk) and each parameter it uses that is not at its
    default, the factor and alpha always. original_context is not one: they read it from the file."""
    if scaling.method == "none":
        return ["--method", "none"]
    defaults = {f.name: f.default for f in dataclasses.fields(RopeScaling)}
    values: dict = {} if scaling.method == "ntk" else {"method": scaling.method}
    for name in USES[scaling.method]:
        value = getattr(scaling, name)
        if name != "original_context" and (value != defaults[name] or name in ("alpha", "factor")):
            values[name] = value
    return cli_options(**values, ctx=target)


# What a layer runs when the global layers run a scaling (layer_kinds): "scaled", the scaling over
# the whole context; "window", the scaling within a sliding window only; "own", a window layer's
# rope of its own, which the scaling does not reach; "none", no RoPE at all.
LAYER_KINDS = ("scaled", "window", "own", "none")


def layer_kinds(view: RopeView, scaling: RopeScaling, target: int, *, in_file: bool) -> Dict[int, str]:
    """Each layer's kind (LAYER_KINDS) when llama.cpp runs ``scaling`` for ``target`` tokens, written
    into the file or (``in_file`` False) given at run time, read off the llama.cpp contract
    (RopeView.layer_ropes): a layer rotates with the scaling when it runs its base and scale with
    as many rotary dimensions. Only "scaled" layers relate tokens up to the target apart with the
    scaled rope, so the criterion is theirs: window layers never see pairs further apart than the
    window (within the training context), and a layer without RoPE has no pairs at all."""
    rope = with_context(to_llama(scaling, length=target), view)
    kinds = {il: "none" for il in range(view.layers)}
    for layer in view.layer_ropes(rope, in_file=in_file, n_ctx=target):
        same = (layer.freq_base, layer.freq_scale, layer.dims) == (rope.freq_base, rope.freq_scale, view.dims)
        kinds[layer.index] = ("window" if layer.window else "scaled") if same else "own"
    return kinds


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
        mark = " (recommended)" if opt.scaling == rec.scaling else ""
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
