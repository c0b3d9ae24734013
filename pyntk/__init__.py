"""pyntk: NTK-aware scaled RoPE and its relatives for llama.cpp and GGUF models."""

from importlib.metadata import PackageNotFoundError, version

from .errors import PyntkError
from .rope import cos_sin, cpu_features, inv_freq, rotate
from .scaling import METHODS, RopeScaling

try:
    __version__ = version("pyntk")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "METHODS", "PyntkError", "RopeScaling", "cos_sin", "cpu_features", "inv_freq", "rotate",
    "__version__",
]
