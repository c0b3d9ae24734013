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
