"""The scaling model: one RoPE scaling method with its parameters, validated.

Every other part of pyntk (the C++ core, the numpy reference, GGUF editing, the
llama.cpp bridge, the CLI) takes a :class:`RopeScaling`. Method names live here
and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import sys
from dataclasses import dataclass
from typing import Optional

# name -> one-line description; the order is the C++ core's enum order.
METHODS = {
    "none": "unscaled RoPE",
    "linear": "Position Interpolation: every frequency divided by the factor",
    "ntk": "static NTK-aware: base raised so the lowest frequency is divided by alpha",
    "dynamic": "Dynamic NTK: NTK base recomputed from the current sequence length",
    "ntk-by-parts": "high frequencies kept, low ones interpolated, a ramp between (YaRN without temperature)",
    "yarn": "NTK-by-parts plus the attention temperature 0.1*ln(factor)+1",
    "llama3": "Llama 3.1 wavelength bands: low frequencies divided by factor, a smooth band between",
}

# Which optional parameters each method takes; anything else must stay at its default.
# The one table of method -> parameters: the CLI, target planning and records derive from it.
USES: dict[str, tuple[str, ...]] = {
    "none": (),
    "linear": ("factor",),
    "ntk": ("alpha",),
    "dynamic": ("factor", "original_context"),
    "ntk-by-parts": ("factor", "original_context", "beta_fast", "beta_slow"),
    "yarn": ("factor", "original_context", "beta_fast", "beta_slow", "attn_factor"),
    "llama3": ("factor", "original_context", "low_freq_factor", "high_freq_factor"),
}


def needs_context(method: str) -> bool:
    """Whether ``method`` needs the model's training context (original_context)."""
    return "original_context" in USES[method]


# The NTK base exponent d/(d-2) is undefined for a single pair.
_NEEDS_TWO_PAIRS = {"ntk", "dynamic"}

MAX_DIMS = 1 << 16
# Every consumer (the C++ core, the numpy reference, the llama.cpp mapping) derives the scaled base
# and the wavelengths 2*pi/inv_i in float64: both must stay below its largest number.
_LOG_MAX = math.log(sys.float_info.max)


def whole(name: str, value, low: int, high: int, hint: str = "") -> int:
    """``value`` as an int from ``low`` to ``high``; a ValueError (saying ``hint``) otherwise."""
    hint = f" ({hint})" if hint else ""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number{hint}, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be from {low} to {high}{hint}, got {number}")
    return number


def _finite(name: str, value: float, low: float, *, low_inclusive: bool, hint: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(value) and (value >= low if low_inclusive else value > low)
    if not ok:
        bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}{hint}")
    return value


@dataclass(frozen=True)
class RopeScaling:
    """A RoPE scaling method and its parameters.

    method            one of ``METHODS``
    base              rope base b (``ARCH.rope.freq_base``), > 1
    dims              rotary dimensions d (even, >= 2)
    original_context  context the model was trained on, L0 (dynamic, ntk-by-parts, yarn, llama3)
    alpha             static NTK alpha, >= 1 (ntk)
    factor            scale s = target context / L0, >= 1 (linear, dynamic, ntk-by-parts, yarn, llama3)
    beta_fast/slow    YaRN ramp ends in rotations over L0 (ntk-by-parts, yarn)
    attn_factor       extra multiplier on YaRN's temperature (yarn)
    low/high_freq_factor  Llama 3.1 band edges (llama3)
    """

    method: str = "none"
    base: float = 10000.0
    dims: int = 128
    original_context: Optional[int] = None
    alpha: float = 1.0
    factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}"
            )
        low_dims = 4 if self.method in _NEEDS_TWO_PAIRS else 2
        dims = whole("dims", self.dims, low_dims, MAX_DIMS, "the rotary dimensions, e.g. 128")
        if dims % 2:
            raise ValueError(f"dims must be even (RoPE rotates pairs), got {dims}")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("dims", dims)
        set_("base", _finite("base", self.base, 1.0, low_inclusive=False,
                             hint=" (the rope base, e.g. 10000)"))
        set_("alpha", _finite("alpha", self.alpha, 1.0, low_inclusive=True,
                              hint=" (alpha 1 means no scaling)"))
        set_("factor", _finite("factor", self.factor, 1.0, low_inclusive=True,
                               hint=" (factor = target context / training context)"))
        set_("beta_fast", _finite("beta_fast", self.beta_fast, 0.0, low_inclusive=False, hint=""))
        set_("beta_slow", _finite("beta_slow", self.beta_slow, 0.0, low_inclusive=False, hint=""))
        if self.beta_fast <= self.beta_slow:
            raise ValueError(
                f"beta_fast must be greater than beta_slow, got {self.beta_fast:g} <= {self.beta_slow:g}"
            )
        set_("attn_factor", _finite("attn_factor", self.attn_factor, 0.0, low_inclusive=False, hint=""))
        set_("low_freq_factor", _finite("low_freq_factor", self.low_freq_factor, 0.0,
                                        low_inclusive=False, hint=""))
        set_("high_freq_factor", _finite("high_freq_factor", self.high_freq_factor, 0.0,
                                         low_inclusive=False, hint=""))
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor must be greater than low_freq_factor, got "
                f"{self.high_freq_factor:g} <= {self.low_freq_factor:g}"
            )

        if self.original_context is not None:
            set_("original_context", whole("original_context", self.original_context, 1, 2**32 - 1,
                                            "the model's training context in tokens"))
        elif needs_context(self.method):
            raise ValueError(
                f"method {self.method!r} needs original_context (the model's training context, "
                f"e.g. 4096)"
            )

        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("alpha", "factor", "beta_fast", "beta_slow", "attn_factor",
                     "low_freq_factor", "high_freq_factor"):
            if name not in USES[self.method] and getattr(self, name) != defaults[name]:
                users = [m for m, uses in USES.items() if name in uses]
                raise ValueError(
                    f"{name} does not apply to method {self.method!r}; it is used by: {', '.join(users)}"
                )
        self._check_range()

    def _check_range(self) -> None:
        """Refuse an alpha, factor or base whose scaled base or longest wavelength is past float64
        (computed in logarithms, so nothing overflows here)."""
        d, method = self.dims, self.method
        log_base, cause = math.log(self.base), "base"
        if method == "ntk":
            log_base += d / (d - 2) * math.log(self.alpha)
            cause = "alpha"
        elif method == "dynamic":  # the base at the target context, factor * original_context
            s = self.factor
            log_base += d / (d - 2) * math.log(s * s - s + 1)
            cause = "factor"
        elif self.factor != 1.0:  # the other methods divide a frequency by the factor at most
            cause = "factor"
        divisor = 1.0 if method == "dynamic" else self.factor
        log_wavelength = math.log(2 * math.pi) + (d - 2) / d * log_base + math.log(divisor)
        if max(log_base, log_wavelength) >= _LOG_MAX:
            value = getattr(self, cause)
            with_base = f" with base {self.base:g}" if cause != "base" else ""
            raise ValueError(
                f"{cause} {value:g}{with_base} is too large for {method}: the scaled base or the longest "
                f"wavelength would pass {sys.float_info.max:.2g}, the largest float64; choose a smaller {cause}"
            )

    @property
    def ntk_base(self) -> float:
        """The static NTK base b * alpha^(d/(d-2)) (ntk only)."""
        if self.method != "ntk":
            raise ValueError("ntk_base is defined for method 'ntk' only")
        return self.base * self.alpha ** (self.dims / (self.dims - 2))

    def replace(self, **changes) -> "RopeScaling":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """A short human summary, e.g. ``ntk alpha=4 (base 10000 -> 65536)``."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        parts = [self.method]
        for name in sorted(USES[self.method]):
            value = getattr(self, name)
            if value != defaults[name] or name in ("factor", "alpha", "original_context"):
                parts.append(f"{name}={value:g}")
        text = " ".join(parts)
        if self.method == "ntk":
            text += f" (base {self.base:g} -> {self.ntk_base:.6g})"
        return text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def method_help() -> str:
    width = max(map(len, METHODS))
    return "\n".join(f"  {name:<{width}}  {text}" for name, text in METHODS.items())
