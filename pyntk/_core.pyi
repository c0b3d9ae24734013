import enum

import numpy as np

__version__: str

class Method(enum.IntEnum):
    none = 0
    linear = 1
    ntk = 2
    dynamic = 3
    ntk_by_parts = 4
    yarn = 5
    llama3 = 6

def inv_freq(
    method: Method, dims: int, base: float, original_context: float, alpha: float, factor: float,
    beta_fast: float, beta_slow: float, attn_factor: float, low_freq_factor: float,
    high_freq_factor: float, seq_len: float,
) -> tuple[np.ndarray, float]: ...

class RopeMode(enum.IntEnum):
    normal = 0
    neox = 2

def rotate(
    x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, attn: float, mode: RopeMode,
    out: np.ndarray | None, threads: int,
) -> np.ndarray: ...
def cos_sin(positions: np.ndarray, inv_freq: np.ndarray, attn: float) -> tuple[np.ndarray, np.ndarray]: ...
def cpu_features() -> dict[str, bool]: ...
def kernels() -> list[str]: ...
def kernel() -> str: ...
def set_kernel(name: str) -> None: ...
