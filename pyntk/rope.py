"""The Python face of the C++ core."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

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
    if seq_len is not None and not (_whole(seq_len) and seq_len >= 0):
        raise ValueError(f"seq_len must be a non-negative whole number of tokens, got {seq_len!r}")
    s = scaling
    return _core.inv_freq(
        _core_method(s.method), s.dims, s.base, float(s.original_context or 0), s.alpha, s.factor,
        s.beta_fast, s.beta_slow, s.attn_factor, s.low_freq_factor, s.high_freq_factor,
        float(seq_len or 0),
    )


def _whole(value) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):  # "10", nan, inf
        return False


_MODES = {"neox": _core.RopeMode.neox, "normal": _core.RopeMode.normal}


def _positions(positions) -> np.ndarray:
    pos = np.asarray(positions)
    if pos.ndim == 0:
        raise ValueError(f"positions must be an array with one integer per token, got {positions!r}")
    if pos.size == 0:
        return np.zeros(pos.shape, dtype=np.int64)
    # Integers past int64 come as uint64, or past uint64 as Python objects.
    if (pos.dtype.kind == "O" and all(isinstance(p, int) for p in pos.flat)
            or pos.dtype.kind == "u" and pos.max() > np.iinfo(np.int64).max):
        raise ValueError(f"positions must be non-negative and at most 2^53, "
                         f"got {max(pos.flat, key=abs)}")
    if pos.dtype.kind not in "iu":
        raise TypeError(f"positions must be integers, got dtype {pos.dtype}")
    return np.ascontiguousarray(pos, dtype=np.int64)


def _frequencies(scaling: RopeScaling, pos: np.ndarray, n_rot, seq_len) -> Tuple[np.ndarray, float]:
    if not isinstance(scaling, RopeScaling):
        raise TypeError(f"scaling must be a pyntk.RopeScaling, got {type(scaling).__name__}")
    if n_rot is not None:
        if isinstance(n_rot, bool) or not isinstance(n_rot, (int, np.integer)):
            raise TypeError(f"n_rot must be a whole number, got {n_rot!r}")
        if n_rot < 2 or n_rot % 2:
            raise ValueError(f"n_rot must be even and at least 2 (RoPE rotates pairs), got {n_rot}")
        if n_rot != scaling.dims:
            scaling = scaling.replace(dims=int(n_rot))
    if seq_len is None and scaling.method == "dynamic":
        seq_len = int(pos.max()) + 1 if pos.size else 0
    return inv_freq(scaling, seq_len)


def rotate(x: np.ndarray, positions, scaling: RopeScaling, mode: str = "neox",
           n_rot: Optional[int] = None, out: Optional[np.ndarray] = None,
           threads: Optional[int] = None, seq_len: Optional[int] = None) -> np.ndarray:
    """Apply scaled RoPE to ``x`` in place, or into ``out``; returns the rotated array.

    x          float32 or float16, [tokens, heads, head_dim] or [batch, tokens, heads,
               head_dim]; the last axis contiguous, the others may be strided
    positions  one non-negative integer per token ([tokens], shared by the batch, or
               [batch, tokens]); any values from 0 to 2^53, not only 0..tokens-1
    scaling    the method and its parameters (:class:`RopeScaling`)
    mode       "neox" rotates (x[i], x[i + n_rot/2]) (Qwen2, Gemma, Phi-3, GPT-NeoX),
               "normal" rotates (x[2i], x[2i+1]) (llama); llama.cpp's conventions
    n_rot      rotary dimensions, default ``scaling.dims``; another value uses the
               frequencies of ``scaling.replace(dims=n_rot)``. Dimensions past n_rot are
               left as they are (copied into ``out``)
    out        array shaped and typed like ``x``, not overlapping it; None: in place. The
               array written (``out``, or ``x`` in place) must not have two elements
               sharing memory, as a zero stride makes; an ``x`` only read may
               (``np.broadcast_to``)
    threads    worker threads; None picks by the cores and the size of the job
    seq_len    current sequence length for Dynamic NTK; default max(positions) + 1

    Pair i turns by p * inv_freq[i] (see :func:`inv_freq`); YaRN's temperature multiplies
    cos and sin, as in llama.cpp. Angles are formed in double precision, so they stay
    accurate at large positions.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    if out is not None and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array or None, got {type(out).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'neox' or 'normal', got {mode!r}")
    if threads is None:
        threads = 0
    elif (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
          or not 1 <= threads <= _core.MAX_THREADS):
        raise ValueError(f"threads must be a whole number from 1 to {_core.MAX_THREADS} or None, "
                         f"got {threads!r}")
    pos = _positions(positions)
    inv, attention = _frequencies(scaling, pos, n_rot, seq_len)
    return _core.rotate(x, pos, inv, attention, _MODES[mode], out, int(threads))


def cos_sin(positions, scaling: RopeScaling, n_rot: Optional[int] = None,
            seq_len: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The (cos, sin) tables :func:`rotate` uses: float32 [len(positions), n_rot/2], both
    multiplied by the attention factor (YaRN's temperature, 1 for the other methods)."""
    pos = _positions(positions)
    if pos.ndim != 1:
        raise ValueError(f"positions must be one-dimensional, got shape {pos.shape}")
    inv, attention = _frequencies(scaling, pos, n_rot, seq_len)
    return _core.cos_sin(pos, inv, attention)


def cpu_features() -> dict:
    """What this CPU (and OS) supports, the kernels that can run here (best first) and the
    active one, e.g. ``{'avx2': True, ..., 'kernels': ['avx2', 'scalar'], 'kernel': 'avx2'}``.

    The environment variable ``PYNTK_KERNEL`` (read at import) forces a kernel.
    """
    return {**_core.cpu_features(), "kernels": _core.kernels(), "kernel": _core.kernel()}


def kernels() -> List[str]:
    """Names of the kernels this CPU can run, best first; "scalar" is always there."""
    return _core.kernels()


def kernel() -> str:
    """Name of the active kernel."""
    return _core.kernel()


def set_kernel(name: str) -> None:
    """Make ``name`` (one of :func:`kernels`) the active kernel for the whole process."""
    _core.set_kernel(name)


@contextmanager
def use_kernel(name: str) -> Iterator[None]:
    """Run the block with kernel ``name`` active, then restore the previous one."""
    previous = _core.kernel()
    _core.set_kernel(name)
    try:
        yield
    finally:
        _core.set_kernel(previous)
