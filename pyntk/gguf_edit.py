"""Read a GGUF model's RoPE hyper-parameters exactly as llama.cpp reads them.

Key names come from gguf-py (``gguf.Keys``), the same table llama.cpp's converters use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import math

from gguf import Keys

from .errors import PyntkError
from .gguf_file import GGUFFile
from .scaling import RopeScaling

DEFAULT_BASE = 10000.0  # llama.cpp's rope_freq_base_train when the key is absent
DEFAULT_TYPE = "linear"  # llama.cpp's scaling type when the key is absent
LLAMA_CPP_TYPES = ("none", "linear", "yarn", "longrope")

# Architectures that encode positions without RoPE (absolute, ALiBi, recurrent ...).
NO_ROPE_ARCHS = frozenset({
    "bert", "jina-bert-v2", "gpt2", "bloom", "mpt", "jais", "starcoder", "t5", "t5encoder",
    "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "wavtokenizer-dec",
})


def key(template: str, arch: str) -> str:
    return template.format(arch=arch)


@dataclass(frozen=True)
class RopeInfo:
    """RoPE and context hyper-parameters of a GGUF file, defaults applied as llama.cpp does."""

    path: str
    arch: str
    context_length: int
    dims: int
    base: float
    scaling_type: str
    factor: float
    original_context: int
    attn_factor: float
    finetuned: bool
    head_count: Optional[int] = None
    head_count_kv: Optional[int] = None
    base_swa: Optional[float] = None
    # keys that were absent, so their value above is llama.cpp's default
    defaulted: tuple = field(default_factory=tuple)

    @property
    def has_sliding_window(self) -> bool:
        return self.base_swa is not None

    def scaling(self) -> RopeScaling:
        """The scaling llama.cpp applies to this file with no runtime flags."""
        if self.scaling_type == "longrope":
            raise PyntkError(
                f"{self.path}: uses LongRoPE (per-frequency factor tensors), which pyntk does not model"
            )
        common = dict(base=self.base, dims=self.dims)
        if self.scaling_type == "none" or self.factor == 1.0:
            return RopeScaling(method="none", **common)
        if self.scaling_type == "linear":
            return RopeScaling(method="linear", factor=self.factor, **common)
        return RopeScaling(method="yarn", factor=self.factor, original_context=self.original_context,
                           attn_factor=self.attn_factor, **common)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["defaulted"] = list(self.defaulted)
        return d


def _whole(path: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PyntkError(f"{path}: {name} should be a non-negative integer, got {value!r}; "
                         f"the file is corrupt or was written by a broken converter")
    return value


def _number(path: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PyntkError(f"{path}: {name} should be a finite number, got {value!r}; "
                         f"the file is corrupt or was written by a broken converter")
    return float(value)


def read_rope(file_or_path) -> RopeInfo:
    """Read RoPE hyper-parameters as llama.cpp's llama_model::load_hparams reads them."""
    gguf = file_or_path if isinstance(file_or_path, GGUFFile) else GGUFFile(file_or_path)
    path = gguf.path
    arch = gguf.value(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise PyntkError(f"{path}: no general.architecture key; this GGUF is not a model llama.cpp can load")
    if arch in NO_ROPE_ARCHS:
        raise PyntkError(f"{path}: architecture {arch!r} does not use RoPE, so there is nothing to scale")
    defaulted = []

    def get(template: str, default: Any = None) -> Any:
        name = key(template, arch)
        value = gguf.value(name)
        if value is None:
            defaulted.append(name)
            return default
        return value

    ctx = get(Keys.LLM.CONTEXT_LENGTH)
    if ctx is None:
        raise PyntkError(f"{path}: {key(Keys.LLM.CONTEXT_LENGTH, arch)} is missing; llama.cpp "
                         f"cannot load this file either")
    ctx = _whole(path, "context_length", ctx)
    heads = get(Keys.Attention.HEAD_COUNT)
    if isinstance(heads, list):  # per-layer head counts: llama.cpp takes the first layer's for n_rot
        heads = heads[0] if heads else None
    heads_kv = get(Keys.Attention.HEAD_COUNT_KV, heads)
    if isinstance(heads_kv, list):
        heads_kv = heads_kv[0] if heads_kv else None
    dims = get(Keys.Rope.DIMENSION_COUNT)
    if dims is None:
        head_dim = get(Keys.Attention.KEY_LENGTH)
        embd = get(Keys.LLM.EMBEDDING_LENGTH)
        if head_dim is None and isinstance(embd, int) and isinstance(heads, int) and heads > 0:
            head_dim = embd // heads
        if head_dim is None:
            raise PyntkError(f"{path}: cannot tell the rotary dimensions ({key(Keys.Rope.DIMENSION_COUNT, arch)} "
                             f"and the head size keys are missing)")
        dims = head_dim
    dims = _whole(path, "rope.dimension_count", dims)

    factor = get(Keys.Rope.SCALING_FACTOR)
    if factor is None:
        factor = gguf.value(f"{arch}.rope.scale_linear") or 0.0
    factor = _number(path, "rope.scaling.factor", factor)
    scaling_type = get(Keys.Rope.SCALING_TYPE, DEFAULT_TYPE)
    if scaling_type not in LLAMA_CPP_TYPES:
        raise PyntkError(f"{path}: unknown rope.scaling.type {scaling_type!r}; llama.cpp accepts "
                         f"{', '.join(LLAMA_CPP_TYPES)}, so it would refuse this file")
    base_swa = gguf.value(key(Keys.Rope.FREQ_BASE_SWA, arch))
    return RopeInfo(
        path=path,
        arch=arch,
        context_length=ctx,
        dims=dims,
        base=_number(path, "rope.freq_base", get(Keys.Rope.FREQ_BASE, DEFAULT_BASE)),
        scaling_type=scaling_type,
        # llama.cpp: freq_scale = 1/factor, with a factor of 0 meaning "no scaling"
        factor=1.0 if factor == 0.0 else factor,
        original_context=_whole(path, "rope.scaling.original_context_length",
                                get(Keys.Rope.SCALING_ORIG_CTX_LEN, ctx)),
        attn_factor=_number(path, "rope.scaling.attn_factor", get(Keys.Rope.SCALING_ATTN_FACTOR, 1.0)),
        finetuned=bool(get(Keys.Rope.SCALING_FINETUNED, False)),
        head_count=heads if isinstance(heads, int) else None,
        head_count_kv=heads_kv if isinstance(heads_kv, int) else None,
        base_swa=None if base_swa is None else _number(path, "rope.freq_base_swa", base_swa),
        defaulted=tuple(defaulted),
    )
