"""A GGUF file's tensors, read and dequantized on demand: never the whole model at once.

Each read takes the bytes of whole rows from the file (``os.pread``: they become ordinary memory
that is freed after use, where a memory map would leave the file's pages counted in the process's
resident size) and dequantizes them with gguf-py's numpy code, exactly, into float32. Rows are
dequantized in chunks of about a million values, on a thread per core: numpy releases the GIL in
its loops, and gguf-py's own ``quants.dequantize`` works in groups of 16 rows, several times
slower on large tensors than calling its per-type ``dequantize_rows`` on bigger chunks (same
code, same values; tests/test_forward.py checks they agree bit for bit).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence

import numpy as np
from gguf import GGMLQuantizationType, quants

from ..errors import PyntkError
from ..gguf_file import GGUFFile, TensorInfo

CHUNK_VALUES = 1 << 20  # values dequantized per task


class Weights:
    """The tensors of the GGUF file at ``gguf.path``, by name."""

    def __init__(self, gguf: GGUFFile) -> None:
        self.path = gguf.path
        self.data_offset = gguf.data_offset
        self.infos: Dict[str, TensorInfo] = {t.name: t for t in gguf.tensors}

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def type(self, name: str) -> GGMLQuantizationType:
        return self.infos[name].type

    def rows(self, name: str) -> int:
        """Rows of a matrix (GGUF shape (columns, rows)); the length of a vector."""
        shape = self.infos[name].shape
        return int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]

    def read(self, name: str, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """float32 (rows, columns) for rows start..stop-1 of a matrix; a vector whole."""
        t = self.infos[name]
        if len(t.shape) == 1:
            return self._dequantize(t, self._bytes(t, 0, 1).reshape(1, -1))[0].copy()
        stop = self.rows(name) if stop is None else stop
        cols = t.shape[0]
        out = np.empty((stop - start, cols), dtype=np.float32)
        step = max(1, CHUNK_VALUES // cols)

        def work(first: int) -> None:
            last = min(stop, first + step)
            raw = self._bytes(t, first, last - first).reshape(last - first, -1)
            out[first - start:last - start] = self._dequantize(t, raw)

        chunks = range(start, stop, step)
        if len(chunks) == 1:
            work(start)
        else:
            with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as pool:
                list(pool.map(work, chunks))
        return out

    def take(self, name: str, ids: Sequence[int]) -> np.ndarray:
        """float32 rows ``ids`` of a matrix (an embedding lookup), reading only those rows."""
        t = self.infos[name]
        unique, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        raw = np.stack([self._bytes(t, int(i), 1) for i in unique])
        return self._dequantize(t, raw)[inverse]

    def _bytes(self, t: TensorInfo, first_row: int, n_rows: int) -> np.ndarray:
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        row_bytes = t.nbytes // rows
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), n_rows * row_bytes, self.data_offset + t.offset + first_row * row_bytes)
        if len(data) != n_rows * row_bytes:
            raise PyntkError(f"{self.path}: tensor {t.name!r} runs past the end of the file; the file "
                             f"changed while it was read, or is truncated")
        return np.frombuffer(data, dtype=np.uint8)

    def _dequantize(self, t: TensorInfo, raw: np.ndarray) -> np.ndarray:
        """raw (rows, row bytes) -> float32 (rows, columns), by gguf-py."""
        if t.type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            return quants.dequantize(raw, t.type).astype(np.float32, copy=False)
        kind = getattr(quants, t.type.name, None)
        if kind is None or not hasattr(kind, "dequantize_rows"):
            raise PyntkError(f"{self.path}: tensor {t.name!r} is {t.type.name}, which the gguf package "
                             f"cannot dequantize; verify a copy quantized to Q8_0, Q4_K, Q6_K ...")
        kind.init_grid()  # the i-quants' lookup grids, as quants.dequantize does first
        return kind.dequantize_rows(raw)
