"""Per-pair view of a scaling: wavelengths before and after, and what happened to each pair."""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from .reference import inv_freq
from .scaling import RopeScaling

TOL = 1e-9  # relative slack for float rounding when comparing turns and ratios


def full_interpolation(scaling: RopeScaling, seq_len: Optional[int] = None) -> float:
    """The largest factor by which the method divides any frequency."""
    if scaling.method == "ntk":
        return scaling.alpha
    if scaling.method == "dynamic":
        inv, _ = inv_freq(scaling, seq_len)
        plain, _ = inv_freq(RopeScaling(method="none", base=scaling.base, dims=scaling.dims))
        return float(plain[-1] / inv[-1])
    return scaling.factor


def pair_table(scaling: RopeScaling, seq_len: Optional[int] = None,
               context: Optional[int] = None) -> List[dict]:
    """One row per pair: wavelengths (tokens) before/after, ratio, and its status.

    status: ``extrapolated`` (frequency kept, so positions beyond the training context give
    angles the model never saw), ``interpolated`` (divided by the method's full factor, so
    angles stay within the trained range), ``blended`` (in between).
    ``context`` adds how many full turns the original wavelength makes within it.
    """
    plain, _ = inv_freq(RopeScaling(method="none", base=scaling.base, dims=scaling.dims))
    scaled, _ = inv_freq(scaling, seq_len)
    full = full_interpolation(scaling, seq_len)
    rows = []
    for i, (before, after) in enumerate(zip(plain, scaled)):
        ratio = float(after / before)
        if ratio >= 1.0 - TOL:
            status = "extrapolated"
        elif full > 1.0 and ratio <= (1.0 / full) * (1.0 + TOL):
            status = "interpolated"
        else:
            status = "blended"
        row = {
            "pair": i,
            "wavelength_before": 2.0 * math.pi / float(before),
            "wavelength_after": 2.0 * math.pi / float(after),
            "ratio": ratio,
            "status": status,
        }
        if context:
            row["turns_in_context"] = context * float(before) / (2.0 * math.pi)
        rows.append(row)
    return rows


def status_counts(rows: List[dict]) -> dict:
    statuses = np.array([r["status"] for r in rows])
    return {s: int((statuses == s).sum()) for s in ("extrapolated", "blended", "interpolated")}
