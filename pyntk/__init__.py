"""pyntk: NTK-aware scaled RoPE and its relatives for llama.cpp and GGUF models."""

from importlib.metadata import PackageNotFoundError, version

from .errors import PyntkError
from .scaling import METHODS, RopeScaling

# The compiled core loads on first use: the metadata commands (info, gguf-set, gguf-reset, args)
# run without it.
_CORE = ("cos_sin", "cpu_features", "inv_freq", "rotate")


def __getattr__(name: str):
    if name in _CORE:
        from . import rope
        return getattr(rope, name)
    raise AttributeError(f"module 'pyntk' has no attribute {name!r}")


try:
    __version__ = version("pyntk")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "METHODS", "PyntkError", "RopeScaling", "cos_sin", "cpu_features", "inv_freq", "rotate",
    "__version__",
]
