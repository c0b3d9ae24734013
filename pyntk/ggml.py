"""llama.cpp's own RoPE kernel, called through the libggml that llama-cpp-python installs.

The oracle for pyntk's kernels: :func:`ggml_rope` runs ``ggml_rope_ext`` on a copy of an
array, :func:`ggml_args` turns a :class:`RopeScaling` into the arguments llama.cpp would pass,
and :class:`RopeGraph` keeps one prepared graph for repeated runs (benchmarks).

ggml aborts the whole process on a failed assertion, so every argument is checked here
before it reaches the library. Only public functions of ggml.h are called; the one struct
passed by value, ``ggml_init_params``, is part of that public API.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import PyntkError
from . import llamacpp
from .llamacpp import checked_f32
from .scaling import RopeScaling, whole

# From ggml.h.
_GGML_TYPE = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}
_GGML_TYPE_I32 = 26
_ROPE_MODE = {"normal": 0, "neox": 2}
_GGML_STATUS_SUCCESS = 0

_c = ctypes
_p = ctypes.c_void_p


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", _p), ("no_alloc", ctypes.c_bool)]


_SIGNATURES = {
    "base": {
        "ggml_init": (_p, [_InitParams]),
        "ggml_free": (None, [_p]),
        "ggml_tensor_overhead": (_c.c_size_t, []),
        "ggml_graph_overhead": (_c.c_size_t, []),
        "ggml_new_tensor_1d": (_p, [_p, _c.c_int, _c.c_int64]),
        "ggml_new_tensor_4d": (_p, [_p, _c.c_int, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64]),
        "ggml_get_data": (_p, [_p]),
        "ggml_nbytes": (_c.c_size_t, [_p]),
        "ggml_rope_ext": (_p, [_p, _p, _p, _p, _c.c_int, _c.c_int, _c.c_int] + [_c.c_float] * 6),
        "ggml_new_graph": (_p, [_p]),
        "ggml_build_forward_expand": (None, [_p, _p]),
    },
    "cpu": {
        "ggml_graph_compute_with_ctx": (_c.c_int, [_p, _p, _c.c_int]),
    },
}

_libs = None


def library_dir() -> Path:
    """Where llama-cpp-python keeps its shared libraries; PyntkError when it is not installed."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise PyntkError(
            "llama.cpp's kernel needs llama-cpp-python: pip install 'pyntk[llama]' "
            "(or pip install llama-cpp-python)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _load() -> dict:
    global _libs
    if _libs is None:
        where = library_dir()
        libs = {}
        for short in ("base", "cpu"):
            names = (f"libggml-{short}.so", f"libggml-{short}.dylib", f"ggml-{short}.dll")
            path = next((where / n for n in names if (where / n).exists()), where / names[0])
            try:
                # RTLD_GLOBAL: libggml-cpu resolves its libggml-base symbols from this copy.
                lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise PyntkError(
                    f"cannot load {path} from llama-cpp-python ({exc}); reinstall it with "
                    f"pip install --force-reinstall llama-cpp-python"
                ) from None
            for name, (restype, argtypes) in _SIGNATURES[short].items():
                try:
                    fn = getattr(lib, name)
                except AttributeError:
                    raise PyntkError(
                        f"{path} has no {name}; this llama-cpp-python is too old or too new"
                    ) from None
                fn.restype, fn.argtypes = restype, argtypes
                libs[name] = fn
        _libs = libs
    return _libs


def available() -> bool:
    """True when llama-cpp-python's libggml can be loaded."""
    try:
        _load()
    except PyntkError:
        return False
    return True


def ggml_args(scaling: RopeScaling, seq_len: Optional[int] = None) -> dict:
    """``ggml_rope`` keyword arguments that make llama.cpp compute ``scaling``: pyntk.llamacpp's
    one mapping, rendered for ggml (Dynamic NTK as the static base for ``seq_len``)."""
    return llamacpp.ggml_args(llamacpp.to_llama(scaling, length=seq_len), scaling.dims)


class RopeGraph:
    """One prepared ``ggml_rope_ext`` graph: fill :attr:`src`, :meth:`compute`, read :attr:`dst`.

    ``src`` and ``dst`` are numpy views of ggml's own buffers, [batch?, tokens, heads,
    head_dim]. Each compute takes a little of the context's memory for ggml's work buffer,
    so at most ``computes`` runs fit, with up to ``threads`` threads each; :meth:`close` (or
    ``with``) frees everything.
    """

    def __init__(self, shape, dtype, positions, n_rot: int, mode: str = "neox", *,
                 freq_base: float = 10000.0, freq_scale: float = 1.0, ext_factor: float = 0.0,
                 attn_factor: float = 1.0, beta_fast: float = 32.0, beta_slow: float = 1.0,
                 n_ctx_orig: int = 0, freq_factors=None, threads: int = 1, computes: int = 1):
        shape = tuple(whole("shape entries", n, 0, 2**40) for n in shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"shape must be [tokens, heads, head_dim] or [batch, tokens, heads, "
                             f"head_dim], got {shape}")
        dtype = np.dtype(dtype)
        if dtype not in _GGML_TYPE:
            raise TypeError(f"ggml's rope takes float32 or float16, got {dtype}")
        if mode not in _ROPE_MODE:
            raise ValueError(f"mode must be 'neox' or 'normal', got {mode!r}")
        head_dim, tokens = shape[-1], shape[-3]
        n_rot = whole("n_rot", n_rot, 2, max(2, head_dim))
        if n_rot % 2 or n_rot > head_dim:
            raise ValueError(f"n_rot must be even and at most head_dim {head_dim}, got {n_rot}")
        positions = np.asarray(positions)
        if positions.shape != (tokens,) or (positions.size and positions.dtype.kind not in "iu"):
            raise ValueError(f"positions must be {tokens} integers, one per token")
        if positions.size and (positions.min() < 0 or positions.max() > 2**31 - 1):
            raise ValueError("ggml takes positions from 0 to 2**31 - 1")
        params = [checked_f32(v, n) for n, v in (
            ("freq_base", freq_base), ("freq_scale", freq_scale), ("ext_factor", ext_factor),
            ("attn_factor", attn_factor), ("beta_fast", beta_fast), ("beta_slow", beta_slow))]
        n_ctx_orig = whole("n_ctx_orig", n_ctx_orig, 0, 2**31 - 1)
        threads = whole("threads", threads, 1, 256)
        computes = whole("computes", computes, 1, 1 << 20)
        if freq_factors is not None:
            freq_factors = np.ascontiguousarray(freq_factors, dtype=np.float32)
            if freq_factors.shape != (n_rot // 2,) or not np.all(np.isfinite(freq_factors)):
                raise ValueError(f"freq_factors must be {n_rot // 2} finite numbers")

        lib = _load()
        ne = (list(reversed(shape)) + [1])[:4]  # ggml counts axes from the innermost
        data = int(np.prod(shape)) * dtype.itemsize
        work = 4 * (head_dim + 64) * threads + 64 * threads
        mem = (2 * data + 4 * tokens + 4 * n_rot + 8 * lib["ggml_tensor_overhead"]()
               + lib["ggml_graph_overhead"]()
               + computes * (work + lib["ggml_tensor_overhead"]()) + (1 << 16))
        # Our own memory: ggml aborts the process when its malloc fails, numpy raises.
        self._mem = np.empty(mem + 64, np.uint8)
        aligned = self._mem.ctypes.data + (-self._mem.ctypes.data) % 64
        self._lib = lib
        self._ctx = ctx = lib["ggml_init"](_InitParams(mem, aligned, False))
        self.computes_left = computes
        self.threads = threads
        try:
            src = lib["ggml_new_tensor_4d"](ctx, _GGML_TYPE[dtype], *ne)
            pos = lib["ggml_new_tensor_1d"](ctx, _GGML_TYPE_I32, tokens)
            factors = None
            if freq_factors is not None:
                factors = lib["ggml_new_tensor_1d"](ctx, _GGML_TYPE[np.dtype(np.float32)],
                                                    n_rot // 2)
                self._view(factors, (n_rot // 2,), np.float32)[:] = freq_factors
            self._view(pos, (tokens,), np.int32)[:] = positions
            dst = lib["ggml_rope_ext"](ctx, src, pos, factors, n_rot, _ROPE_MODE[mode],
                                       n_ctx_orig, *params)
            self._graph = lib["ggml_new_graph"](ctx)
            lib["ggml_build_forward_expand"](self._graph, dst)
            self.src = self._view(src, shape, dtype)
            self.dst = self._view(dst, shape, dtype)
        except BaseException:
            self.close()
            raise

    def _view(self, tensor, shape, dtype) -> np.ndarray:
        nbytes = self._lib["ggml_nbytes"](tensor)
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes != expected:  # pragma: no cover - would mean a ggml ABI change
            raise PyntkError(f"ggml tensor holds {nbytes} bytes, expected {expected}")
        if nbytes == 0:
            return np.zeros(shape, dtype)
        buf = (ctypes.c_char * nbytes).from_address(self._lib["ggml_get_data"](tensor))
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    def compute(self, threads: Optional[int] = None) -> np.ndarray:
        """Runs the kernel on :attr:`src` (with ``threads``, default the graph's) and returns
        :attr:`dst`."""
        threads = self.threads if threads is None else whole("threads", threads, 1, self.threads)
        if self._ctx is None:
            raise ValueError("this RopeGraph is closed")
        if self.computes_left <= 0:
            raise ValueError("this RopeGraph has used up its computes; make a new one")
        self.computes_left -= 1
        if self.src.size:
            status = self._lib["ggml_graph_compute_with_ctx"](self._ctx, self._graph, threads)
            if status != _GGML_STATUS_SUCCESS:
                raise PyntkError(f"ggml_graph_compute failed with status {status}")
        return self.dst

    def close(self) -> None:
        if self._ctx is not None:
            self.src = self.dst = None
            self._lib["ggml_free"](self._ctx)
            self._ctx = self._mem = None

    def __enter__(self) -> "RopeGraph":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self.close()


def ggml_rope(x, positions, n_rot: int, mode: str = "neox", freq_base: float = 10000.0,
              freq_scale: float = 1.0, ext_factor: float = 0.0, attn_factor: float = 1.0,
              beta_fast: float = 32.0, beta_slow: float = 1.0, n_ctx_orig: int = 0, *,
              freq_factors=None, threads: int = 1) -> np.ndarray:
    """llama.cpp's ``ggml_rope_ext`` applied to a copy of ``x`` (float32 or float16,
    [batch?, tokens, heads, head_dim]); ``positions`` one per token, shared by the batch.

    Arguments as in ggml.h; ``mode`` is "neox" or "normal". Returns a new array.
    """
    x = np.asarray(x)
    with RopeGraph(x.shape, x.dtype, positions, n_rot, mode, freq_base=freq_base,
                   freq_scale=freq_scale, ext_factor=ext_factor, attn_factor=attn_factor,
                   beta_fast=beta_fast, beta_slow=beta_slow, n_ctx_orig=n_ctx_orig,
                   freq_factors=freq_factors, threads=threads) as graph:
        graph.src[...] = x
        return graph.compute().copy()
