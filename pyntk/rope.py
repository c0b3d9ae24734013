"""The Python face of the C++ core."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _core
from .scaling import RopeScaling


def _core_method(method: str) -> "_core.Method":
    return _core.Method.__members__[method.replace("-", "_")]


def inv_freq(scaling: RopeScaling, seq_len: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """Per-pair inverse frequencies (float64, length dims/2) and the attention factor.

    ``seq_len`` is the current sequence length; it matters for Dynamic NTK only.
    """
    if not isinstance(scaling, RopeScaling):
        raise TypeError(f"scaling must be a pyntk.RopeScaling, got {type(scaling).__name__}")
    if seq_len is not None and (isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 0):
        raise ValueError(f"seq_len must be a non-negative whole number of tokens, got {seq_len!r}")
    s = scaling
    return _core.inv_freq(
        _core_method(s.method), s.dims, s.base, float(s.original_context or 0), s.alpha, s.factor,
        s.beta_fast, s.beta_slow, s.attn_factor, s.low_freq_factor, s.high_freq_factor,
        float(seq_len or 0),
    )
