"""numpy float64 reference for everything the C++ core computes: the oracle in tests.

Written from the formulas in DESIGN.md, vectorised over pairs, sharing no code with
csrc/. Slow and plain on purpose.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .scaling import RopeScaling


def _plain(base: float, dims: int) -> np.ndarray:
    return base ** (-2.0 * np.arange(dims // 2, dtype=np.float64) / dims)


def _ntk_base(base: float, dims: int, multiplier: float) -> float:
    return base * multiplier ** (dims / (dims - 2.0))


def yarn_ramp_bounds(s: RopeScaling) -> Tuple[float, float]:
    """llama.cpp's corr_dims: the pair indices where the YaRN ramp starts and ends."""
    d, base, ctx = s.dims, s.base, s.original_context

    def corr(rotations: float) -> float:
        return d * np.log(ctx / (2.0 * np.pi * rotations)) / (2.0 * np.log(base))

    low = max(0.0, float(np.floor(corr(s.beta_fast))))
    high = min(d - 1.0, float(np.ceil(corr(s.beta_slow))))
    return low, high


def extrapolation_weight(s: RopeScaling) -> np.ndarray:
    """gamma_i of NTK-by-parts: 1 keeps the pair's angle, 0 interpolates it by the factor."""
    low, high = yarn_ramp_bounds(s)
    i = np.arange(s.dims // 2, dtype=np.float64)
    return 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)


def dynamic_base(s: RopeScaling, seq_len: Optional[int]) -> float:
    if seq_len is None or seq_len <= s.original_context:
        return s.base
    return _ntk_base(s.base, s.dims, s.factor * seq_len / s.original_context - (s.factor - 1.0))


def inv_freq(s: RopeScaling, seq_len: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """(per-pair inverse frequencies, attention factor) in float64."""
    plain = _plain(s.base, s.dims)
    attention = 1.0
    if s.method == "none":
        inv = plain
    elif s.method == "linear":
        inv = plain / s.factor
    elif s.method == "ntk":
        inv = _plain(_ntk_base(s.base, s.dims, s.alpha), s.dims)
    elif s.method == "dynamic":
        inv = _plain(dynamic_base(s, seq_len), s.dims)
    elif s.method in ("ntk-by-parts", "yarn"):
        gamma = extrapolation_weight(s)
        inv = plain / s.factor * (1.0 - gamma) + plain * gamma
        if s.method == "yarn":
            attention = s.attn_factor * (0.1 * np.log(s.factor) + 1.0)
    elif s.method == "llama3":
        wavelength = 2.0 * np.pi / plain
        ctx = s.original_context
        smooth = (ctx / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        blended = (1.0 - smooth) * plain / s.factor + smooth * plain
        inv = np.where(wavelength < ctx / s.high_freq_factor, plain,
                       np.where(wavelength > ctx / s.low_freq_factor, plain / s.factor, blended))
    else:  # pragma: no cover - RopeScaling rejects unknown methods
        raise ValueError(s.method)
    return np.ascontiguousarray(inv, dtype=np.float64), float(attention)


def cos_sin(s: RopeScaling, positions,
            seq_len: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """float64 (cos, sin) of p * inv_freq, shaped positions.shape + (dims/2,), both times the
    attention factor. Dynamic NTK's seq_len defaults to max(positions) + 1."""
    positions = np.asarray(positions)
    if seq_len is None and s.method == "dynamic":
        seq_len = int(positions.max()) + 1 if positions.size else 0
    inv, attention = inv_freq(s, seq_len)
    theta = positions.astype(np.float64)[..., None] * inv
    return np.cos(theta) * attention, np.sin(theta) * attention


def rotate(x, positions, s: RopeScaling, mode: str = "neox",
           seq_len: Optional[int] = None) -> np.ndarray:
    """float64 RoPE of x [..., tokens, heads, head_dim] with d = s.dims rotary dimensions.

    positions: one per token, [tokens] or x.shape[:-2]. mode "neox" pairs (x[i], x[i + d/2]),
    "normal" pairs (x[2i], x[2i+1]); each pair turns by theta = p * inv_freq[i]:
    (x0 cos - x1 sin, x0 sin + x1 cos). Dimensions past d are returned unchanged.
    """
    y = np.array(x, dtype=np.float64)
    d = s.dims
    cos, sin = cos_sin(s, positions, seq_len)
    cos, sin = cos[..., None, :], sin[..., None, :]  # one row per token, shared by the heads
    first, second = (slice(0, d // 2), slice(d // 2, d)) if mode == "neox" else (
        slice(0, d, 2), slice(1, d, 2))
    x0, x1 = y[..., first].copy(), y[..., second].copy()
    y[..., first] = x0 * cos - x1 * sin
    y[..., second] = x0 * sin + x1 * cos
    return y
