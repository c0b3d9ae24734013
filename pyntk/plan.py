"""How long a context a scaling supports, and the parameters that reach a target context.

Criterion (Liu et al. 2023, "Scaling Laws of RoPE-based Extrapolation", arXiv:2310.05209):
the pairs that complete at least one full turn within the training context L0 were trained on
every angle; there are d_extra/2 of them, d_extra = 2*ceil((d/2) * log_b(L0 / 2pi)) (the
"critical dimension"). A model stays in distribution while the slowest of those pairs has not
turned further than in training, so a base b' supports T = 2pi * b'^(d_extra/d) tokens.
Methods that interpolate (linear, ntk-by-parts, yarn, llama3) are designed for factor * L0;
Dynamic NTK rescales itself per length and is given the same factor * L0.
"""

from __future__ import annotations

import math

from .scaling import RopeScaling


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
