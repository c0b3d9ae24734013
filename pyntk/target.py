"""Planning gguf-set's target: the scaling and context a request means for a model, computed
from the model's ORIGINAL values (so repeated edits never compound), and what llama.cpp runs then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from . import evidence
from .errors import PyntkError
from .llamacpp import (CTX_PAD, FILE_METHODS, MAX_CONTEXT, LlamaRope, RopeView, check_context, checked_f32,
                       to_llama, with_context)
from .plan import alpha_for_context, recommended_scaling, supported_context
from .scaling import USES, RopeScaling, needs_context

# The longest reach, as a multiple of the training context, that any measurement supports, with
# room to spare: the largest published extension is YaRN's Llama 2 from 4k to 128k tokens, 32x
# (Peng et al. 2023, arXiv:2309.00071, fine-tuned at that factor); pyntk's own measurements stop at
# 4x (docs/RESULTS.md). Beyond 64x a scaling is refused unless --force.
MAX_SCALE = 64


@dataclass(frozen=True)
class Target:
    """The scaling gguf-set writes, the context, and what llama.cpp runs afterwards."""

    scaling: RopeScaling
    context: int  # new ARCH.context_length
    supported_context: int  # what the scaling keeps in distribution (pyntk plan's criterion)
    rope: LlamaRope  # the one mapping's result: every value written comes from here
    why: str = ""  # pyntk plan's reason, when the scaling is its recommendation for --ctx

    def to_dict(self) -> Dict[str, Any]:
        return {"scaling": self.scaling.to_dict(), "summary": self.scaling.describe(),
                "context": self.context, "supported_context": self.supported_context,
                "llama_cpp": self.rope.to_dict(), "recommended_because": self.why or None}


def _check_scalable(original: RopeView) -> None:
    """Refuse, as a problem of the file, original values no scaling can start from (a context of 0,
    a base <= 1, odd dimensions): they would otherwise fail deep in the arithmetic. A LongRoPE
    model's factor tensors would stay applied under any new scaling, so it is refused too."""
    if original.scaling_type == "longrope" or original.longrope:
        raise PyntkError(f"{original.path}: uses LongRoPE (per-frequency factor tensors), which pyntk cannot "
                         f"rescale; use the model's own long-context variant")
    try:
        RopeScaling(method="none", base=original.base, dims=original.dims,
                    original_context=original.original_context)
        checked_f32(original.base, "rope.freq_base")  # a float64 in the file may be past float32's range
    except ValueError as e:
        raise PyntkError(f"{original.path}: the model's own RoPE values cannot be scaled: {e}; the file is "
                         f"corrupt or was written by a broken converter") from None


def factor_needs_method(choices) -> str:
    """The refusal of --factor without --method: the choices, best measured first, with what
    pyntk's measurements (pyntk/evidence.json) say of them."""
    measured = sorted(evidence.worst(choices).items(), key=lambda item: item[1])
    order = [m for m, _ in measured] + [m for m in choices if m not in dict(measured)]
    listed = ", ".join(order[:-1]) + " or " + order[-1] if len(order) > 1 else order[0]
    text = (f"--factor does not say which method to scale with: add --method {listed} "
            f"(e.g. --method {order[0]} --factor 4)")
    if measured:
        text += "; pyntk's measurements, worst case: " + "; ".join(
            f"{m} {excess:+.0%} perplexity at the target (against the best), {cost:+.0%} inside the "
            f"training context"
            for m, (excess, cost) in measured)
    return text


def beyond_measured(target: "Target") -> str:
    """Why a target is past MAX_SCALE, or "" when it is not."""
    L0 = target.rope.original_context
    scale = max(target.context, target.supported_context) / L0
    if scale <= MAX_SCALE:
        return ""
    return (f"{target.scaling.describe()} reaches {scale:.3g}x the training context {L0}, beyond the "
            f"{MAX_SCALE}x pyntk allows (twice the largest extension any measurement supports: YaRN, "
            f"4k -> 128k tokens, 32x)")


def _options(method: str) -> set:
    """The options gguf-set takes with ``method``: its scale parameter (--alpha, or --base for the
    NTK base itself; --factor) or --ctx, which any scaling can be set up for."""
    options = {"--" + name for name in USES[method] if name in ("alpha", "factor")}
    if "--alpha" in options:
        options.add("--base")
    return (options | {"--ctx"}) if options else set()


def _check_ctx(ctx, L0: int) -> None:
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx <= L0:
        raise ValueError(f"target context {ctx} is not above the model's training context {L0}; "
                         f"give a larger --ctx (e.g. --ctx {2 * L0})")
    check_context(ctx)


def plan_target(original: RopeView, *, method: Optional[str] = None, alpha: Optional[float] = None,
                factor: Optional[float] = None, ctx: Optional[int] = None,
                base: Optional[float] = None, attn_factor: Optional[float] = None,
                force: bool = False) -> Target:
    """Resolve gguf-set's options against the model's ORIGINAL values.

    ``--ctx`` alone means what pyntk plan recommends for it; ``--base`` alone means ntk with
    that base; ``--factor`` needs a method. The context written is ``ctx`` when given, else what
    the scaling supports. A reach beyond MAX_SCALE is refused unless ``force``, a context beyond
    MAX_CONTEXT always.
    """
    _check_scalable(original)
    L0, b0, d = original.original_context, original.base, original.dims
    why = ""
    if method is None and ctx is not None and alpha is None and base is None and factor is None:
        # --ctx alone: what pyntk plan recommends for the target, from the measurements
        _check_ctx(ctx, L0)
        recommended, why, _ = recommended_scaling(d, b0, L0, ctx)
        method = recommended.method
        alpha = recommended.alpha if "alpha" in USES[method] else None
        factor = recommended.factor if "factor" in USES[method] else None
        if method == "ntk-by-parts" and original.has_sliding_window:
            method, why = "yarn", why + "; yarn instead of ntk-by-parts for the sliding-window layers"
    if method is None:
        if alpha is not None or base is not None:
            method = "ntk"
        elif factor is not None:
            raise ValueError(factor_needs_method(FILE_METHODS[2:]))
        elif ctx is not None:
            method = "ntk"
        else:
            raise ValueError("nothing to do: give --alpha A, --ctx N, --base B or --method M --factor S "
                             "(e.g. --alpha 4), or --method none")
    if method not in FILE_METHODS:
        raise ValueError(f"llama.cpp cannot apply {method!r} through its file keys or its runtime flags (it "
                         f"implements linear and yarn scaling, static NTK through the base and NTK-by-parts "
                         f"as yarn); use --method {', '.join(FILE_METHODS[1:])}")
    given = {"--alpha": alpha, "--factor": factor, "--base": base, "--ctx": ctx}
    takes = _options(method)
    for option, value in given.items():
        if value is not None and option not in takes:
            listed = " or ".join(sorted(takes))
            hint = (f"{method} takes {listed}" if takes
                    else "--method none restores unscaled RoPE and takes no parameters")
            raise ValueError(f"{option} does not apply to --method {method}: {hint}")
    if attn_factor is not None and "attn_factor" not in USES[method]:
        raise ValueError("--attn-factor applies to --method yarn only (its temperature multiplier)")
    if alpha is not None and base is not None:
        raise ValueError("give --alpha or --base, not both (--base B sets the NTK base directly)")
    if "alpha" in USES[method] and alpha is None and base is None and ctx is None:
        raise ValueError("--method ntk needs --alpha A, --base B or --ctx N (e.g. --alpha 4)")
    if "factor" in USES[method] and factor is None and ctx is None:
        raise ValueError(f"--method {method} needs --factor S or --ctx N (e.g. --factor 4)")
    if ctx is not None:
        _check_ctx(ctx, L0)

    common = dict(base=b0, dims=d)
    if method == "none":
        scaling = RopeScaling(method="none", **common)
    elif method == "ntk":
        if base is not None:
            if base < b0:
                raise ValueError(f"--base {base:g} is below the model's base {b0:g}; NTK scaling raises "
                                 f"the base (try --base {b0 * 4:g})")
            alpha = (base / b0) ** ((d - 2) / d) if d > 2 else 1.0
        elif alpha is None:
            alpha = alpha_for_context(ctx, d, b0, L0)
        scaling = RopeScaling(method="ntk", alpha=alpha, **common)
    else:
        if factor is None:
            factor = ctx / L0
        extra = {"original_context": L0} if needs_context(method) else {}
        if attn_factor is not None:
            extra["attn_factor"] = attn_factor
        scaling = RopeScaling(method=method, factor=factor, **common, **extra)
    if method == "ntk" and base is not None:  # exactly the base asked for, not alpha's round trip
        rope = LlamaRope("none", checked_f32(base, "the new rope base", "--base"))
    else:
        rope = to_llama(scaling)
    rope = with_context(rope, original)
    if method == "ntk-by-parts" and any(layer.freq_scale == 1.0 for layer in original.layer_ropes(rope, in_file=True)):
        raise ValueError(f"{original.arch}'s sliding-window layers would be damaged by ntk-by-parts: llama.cpp "
                         f"multiplies every layer's cos/sin by rope.scaling.attn_factor, but applies YaRN's "
                         f"temperature (which that cancels) only to the scaled layers; use --method yarn")
    supported = supported_context(scaling, L0)
    # Rounded down to llama.cpp's context padding: its default n_ctx (the training context, padded
    # up to a multiple of 256) then stays within what the scaling supports.
    context = ctx if ctx is not None else max(L0, supported // CTX_PAD * CTX_PAD)
    target = Target(scaling=scaling, context=context, supported_context=supported, rope=rope, why=why)
    beyond = beyond_measured(target)
    if beyond and not force:
        raise ValueError(f"{beyond}; choose a smaller target, or pass --force to use it anyway")
    if context > MAX_CONTEXT:
        raise ValueError(f"the scaling supports {context} tokens, past {MAX_CONTEXT} (2^24), where llama.cpp's "
                         f"float32 positions stop telling neighbouring tokens apart; give --ctx (at most "
                         f"{MAX_CONTEXT})")
    return target
