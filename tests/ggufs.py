"""Small GGUF files for tests, written with the `gguf` package (llama.cpp's gguf-py).

    from ggufs import write_model, ABSENT
    path = write_model(tmp_path / "m.gguf", "llama", context_length=2048,
                       **{"llama.rope.freq_base": ABSENT})

``model_kv(arch, ...)`` gives the key/values a converter writes for an architecture; any key can be
overridden, given an explicit type as ``(value, GGUFValueType)``, or left out with ``ABSENT``.
``write_gguf(path, kv, ...)`` writes them with tensors and a vocabulary; ``write_model`` does both.
With ``complete=True`` (llama, qwen2) the file has every tensor llama.cpp needs, so llama-cpp-python
can load it (random weights, byte-level BPE vocabulary). ``data_bytes`` adds a filler tensor of
that many bytes, streamed, so multi-GiB files cost no memory; ``hole_bytes`` puts a tensor of that
many bytes first and leaves it a hole (a sparse file: no disk blocks, no time), so the other tensors
lie past it, e.g. past 4 GiB.

Helpers for tests: ``data_hash`` (sha256 of the tensor data section), ``file_hash``, ``truncate``,
``patch_bytes``, ``kv_of`` (a file's key/values, typed, to write them again).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

ABSENT = object()  # a key's value meaning "leave this key out"

logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # no "Little Endian only" chatter

__all__ = ["ABSENT", "ARCHS", "model_kv", "write_gguf", "write_model", "data_hash", "file_hash",
           "truncate", "patch_bytes", "kv_of", "Tensor"]

# (name, shape in GGUF order (ne0 first), type); data is random unless given
Tensor = Tuple[str, Tuple[int, ...], GGMLQuantizationType]

ARCHS = ("llama", "qwen2", "gemma3", "gpt2", "bert")


def model_kv(arch: str = "llama", *, context_length: int = 4096, n_embd: int = 64, n_head: int = 4,
             n_head_kv: Optional[int] = None, n_layer: int = 1, n_ff: int = 128,
             finetuned: Optional[bool] = None, name: str = "pyntk test model",
             **overrides: Any) -> Dict[str, Any]:
    """The key/values (architecture keys, no tokenizer) a converter writes for ``arch``.

    ``overrides`` replace or add keys by full name (use ``**{"llama.rope.freq_base": 5e5}``);
    ``ABSENT`` removes one. A bare Python value is written with the type llama.cpp expects
    for known keys (uint32 for counts, float32 for floats); ``(value, GGUFValueType.X)`` forces one.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown test architecture {arch!r}; choose one of {ARCHS}")
    a = arch
    kv: Dict[str, Any] = {
        "general.architecture": arch,
        "general.name": name,
        f"{a}.context_length": context_length,
        f"{a}.embedding_length": n_embd,
        f"{a}.block_count": n_layer,
        f"{a}.feed_forward_length": n_ff,
        f"{a}.attention.head_count": n_head,
    }
    if arch in ("gpt2", "bert"):  # absolute positions, no RoPE
        kv[f"{a}.attention.layer_norm_epsilon"] = 1e-5
        if arch == "bert":
            kv[f"{a}.pooling_type"] = 1
            kv[f"{a}.attention.causal"] = False
    else:
        kv[f"{a}.attention.head_count_kv"] = n_head_kv or n_head
        kv[f"{a}.attention.layer_norm_rms_epsilon"] = 1e-5
        kv[f"{a}.rope.dimension_count"] = n_embd // n_head
        kv[f"{a}.rope.freq_base"] = {"llama": 10000.0, "qwen2": 1000000.0, "gemma3": 1000000.0}[arch]
        if arch == "gemma3":
            kv[f"{a}.rope.freq_base_swa"] = 10000.0
            kv[f"{a}.attention.sliding_window"] = 512
            kv[f"{a}.attention.key_length"] = n_embd // n_head
            kv[f"{a}.attention.value_length"] = n_embd // n_head
    if finetuned is not None:
        kv[f"{a}.rope.scaling.finetuned"] = finetuned
    kv.update(overrides)
    return {k: v for k, v in kv.items() if v is not ABSENT}


_FLOAT_KEYS = ("freq_base", "scaling.factor", "attn_factor", "epsilon", "scale_linear", "freq_base_swa")


def _typed(key: str, value: Any) -> Tuple[Any, GGUFValueType, Optional[GGUFValueType]]:
    if isinstance(value, tuple) and len(value) in (2, 3) and isinstance(value[1], GGUFValueType):
        return value[0], value[1], value[2] if len(value) == 3 else None
    if isinstance(value, bool):
        return value, GGUFValueType.BOOL, None
    if isinstance(value, str):
        return value, GGUFValueType.STRING, None
    if isinstance(value, float) or key.endswith(_FLOAT_KEYS):
        return float(value), GGUFValueType.FLOAT32, None
    if isinstance(value, int):
        return value, GGUFValueType.UINT32 if value >= 0 else GGUFValueType.INT32, None
    if isinstance(value, (list, tuple)):
        first = value[0]
        sub = (GGUFValueType.STRING if isinstance(first, str) else GGUFValueType.FLOAT32
               if isinstance(first, float) else GGUFValueType.INT32)
        return list(value), GGUFValueType.ARRAY, sub
    raise TypeError(f"cannot tell the GGUF type of {key}={value!r}; give (value, GGUFValueType.X)")


def _vocab(vocab_size: int, merges: int) -> Dict[str, Any]:
    """A byte-level BPE vocabulary: 256 byte tokens, then merged tokens, then fillers."""
    # GPT-2's byte-to-unicode table, so llama.cpp's BPE can map every byte
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    tokens = [chars[b] for b in range(256)][:vocab_size]
    letters = [chars[b] for b in range(ord("a"), ord("z") + 1)]
    pairs = [(x, y) for x in letters for y in letters]
    merge_list: List[str] = []
    i = 0
    while len(tokens) < vocab_size:
        if i < len(pairs):
            left, right = pairs[i]
            tokens.append(left + right)
            if len(merge_list) < merges:
                merge_list.append(f"{left} {right}")
        else:
            tokens.append(f"<tok{i}>")
        i += 1
    while len(merge_list) < merges:  # big-vocab variants: as many merges as asked
        merge_list.append(f"{letters[len(merge_list) % 26]} <m{len(merge_list)}>")
    kv: Dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": (tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.ggml.token_type": ([1] * len(tokens), GGUFValueType.ARRAY, GGUFValueType.INT32),
        "tokenizer.ggml.bos_token_id": (0, GGUFValueType.UINT32),
        "tokenizer.ggml.eos_token_id": (min(1, vocab_size - 1), GGUFValueType.UINT32),
    }
    if merge_list:
        kv["tokenizer.ggml.merges"] = (merge_list, GGUFValueType.ARRAY, GGUFValueType.STRING)
    return kv


def _complete_tensors(kv: Dict[str, Any], arch: str, vocab_size: int) -> List[Tensor]:
    """Every tensor llama.cpp's llama/qwen2 loader requires, in F32."""
    a = arch
    F32 = GGMLQuantizationType.F32
    n_embd = _plain(kv[f"{a}.embedding_length"])
    n_ff = _plain(kv[f"{a}.feed_forward_length"])
    n_head = _plain(kv[f"{a}.attention.head_count"])
    n_head_kv = _plain(kv.get(f"{a}.attention.head_count_kv", n_head))
    head = n_embd // n_head
    out: List[Tensor] = [("token_embd.weight", (n_embd, vocab_size), F32),
                         ("output_norm.weight", (n_embd,), F32),
                         ("output.weight", (n_embd, vocab_size), F32)]
    for i in range(_plain(kv[f"{a}.block_count"])):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (n_embd,), F32),
                (p + "attn_q.weight", (n_embd, n_embd), F32),
                (p + "attn_k.weight", (n_embd, head * n_head_kv), F32),
                (p + "attn_v.weight", (n_embd, head * n_head_kv), F32),
                (p + "attn_output.weight", (n_embd, n_embd), F32),
                (p + "ffn_norm.weight", (n_embd,), F32),
                (p + "ffn_gate.weight", (n_embd, n_ff), F32),
                (p + "ffn_up.weight", (n_embd, n_ff), F32),
                (p + "ffn_down.weight", (n_ff, n_embd), F32)]
        if arch == "qwen2":
            out += [(p + "attn_q.bias", (n_embd,), F32), (p + "attn_k.bias", (head * n_head_kv,), F32),
                    (p + "attn_v.bias", (head * n_head_kv,), F32)]
    return out


def _plain(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) else value


def _small_tensors() -> List[Tensor]:
    return [("token_embd.weight", (64, 8), GGMLQuantizationType.F32),
            ("blk.0.attn_q.weight", (64, 64), GGMLQuantizationType.F16),
            ("blk.0.ffn_down.weight", (64, 4), GGMLQuantizationType.Q8_0),
            ("output_norm.weight", (64,), GGMLQuantizationType.F32)]


def _tensor_bytes(shape: Sequence[int], ttype: GGMLQuantizationType, rng: np.random.Generator) -> bytes:
    from gguf import GGML_QUANT_SIZES
    block, size = GGML_QUANT_SIZES[ttype]
    count = int(np.prod(shape))
    if ttype == GGMLQuantizationType.F32:
        return (rng.standard_normal(count) * 0.05).astype("<f4").tobytes()
    if ttype == GGMLQuantizationType.F16:
        return (rng.standard_normal(count) * 0.05).astype("<f2").tobytes()
    return rng.integers(0, 256, count // block * size, dtype=np.uint8).tobytes()


def write_gguf(path: Union[str, Path], kv: Dict[str, Any], *, tensors: Optional[Iterable[Tensor]] = None,
               vocab_size: int = 0, merges: int = 0, data_bytes: int = 0, alignment: Optional[int] = None,
               seed: int = 0, complete: bool = False, hole_bytes: int = 0) -> Path:
    """Write a GGUF file; returns its path.

    kv          key/values in file order (values as in ``model_kv``); tokenizer keys are appended
                when ``vocab_size`` > 0 (after the architecture keys, as converters do)
    tensors     (name, shape, type) with random data; default: a few small mixed-type tensors
    complete    every tensor llama.cpp needs for kv's architecture (llama, qwen2)
    data_bytes  extra I8 tensor 'filler.weight' of this many bytes, streamed in 64 MiB chunks
    hole_bytes  a first I8 tensor 'hole.weight' of this many bytes, never written: a hole
    alignment   general.alignment (default: absent, i.e. 32)
    """
    path = Path(path)
    arch = _plain(kv["general.architecture"])
    rng = np.random.default_rng(seed)
    all_kv = dict(kv)
    if vocab_size:
        all_kv.update(_vocab(vocab_size, merges))
    if alignment is not None:
        all_kv["general.alignment"] = (alignment, GGUFValueType.UINT32)
    all_kv.setdefault("general.quantization_version", (2, GGUFValueType.UINT32))
    if tensors is None:
        tensors = _complete_tensors(all_kv, arch, vocab_size) if complete else _small_tensors()
    tensors = list(tensors)
    if data_bytes:
        tensors.append(("filler.weight", (int(data_bytes),), GGMLQuantizationType.I8))
    if hole_bytes:
        tensors.insert(0, ("hole.weight", (int(hole_bytes),), GGMLQuantizationType.I8))

    writer = GGUFWriter(str(path), arch=arch)
    writer.kv_data[0].clear()  # GGUFWriter pre-adds the architecture; we write kv in our order
    if alignment is not None:
        writer.data_alignment = alignment
    for key, value in all_kv.items():
        v, vtype, sub = _typed(key, value)
        writer.add_key_value(key, v, vtype, sub_type=sub)
    from gguf import GGML_QUANT_SIZES
    for name, shape, ttype in tensors:
        block, size = GGML_QUANT_SIZES[ttype]
        nbytes = int(np.prod(shape)) // block * size
        writer.add_tensor_info(name, tuple(reversed(shape)), np.dtype(np.float32), nbytes, raw_dtype=ttype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    align = writer.data_alignment
    writer.write_padding(fout, fout.tell())
    for name, shape, ttype in tensors:
        if name == "filler.weight" and data_bytes:
            _stream_filler(fout, int(data_bytes), rng)
            n = int(data_bytes)
        elif name == "hole.weight" and hole_bytes:
            n = int(hole_bytes)
            fout.seek(n, os.SEEK_CUR)  # tensors follow, so the file grows past the hole
        else:
            raw = _tensor_bytes(shape, ttype, rng)
            fout.write(raw)
            n = len(raw)
        writer.write_padding(fout, n, align)
    writer.close()
    return path


def _stream_filler(fout, n: int, rng: np.random.Generator) -> None:
    chunk = rng.integers(0, 256, min(n, 64 << 20), dtype=np.uint8)
    written = 0
    while written < n:
        part = chunk[: min(len(chunk), n - written)]
        fout.write(part.tobytes())
        written += len(part)
        chunk = np.roll(chunk, 4099)  # not one repeated block: defeats dedup/compression


def write_model(path: Union[str, Path], arch: str = "llama", *, vocab_size: int = 32, merges: int = 8,
                tensors: Optional[Iterable[Tensor]] = None, data_bytes: int = 0,
                alignment: Optional[int] = None, seed: int = 0, complete: bool = False,
                hole_bytes: int = 0, **kv_options: Any) -> Path:
    """``write_gguf(path, model_kv(arch, **kv_options), ...)``: a small model of ``arch``."""
    kv = model_kv(arch, **kv_options)
    return write_gguf(path, kv, tensors=tensors, vocab_size=vocab_size, merges=merges,
                      data_bytes=data_bytes, alignment=alignment, seed=seed, complete=complete,
                      hole_bytes=hole_bytes)


def kv_of(path: Union[str, Path]) -> Dict[str, Any]:
    """Every key/value of a GGUF file in file order, typed as ``write_gguf`` takes them.

    Read with gguf-py's reader, not pyntk's (which the tests check). Written again with the same
    tensor infos' start, the key/values are byte for byte the same, so a pyntk record (and its
    layout hint) carries over to a file with other tensors.
    """
    from gguf import GGUFReader
    out: Dict[str, Any] = {}
    for name, field in GGUFReader(str(path)).fields.items():
        if name.startswith("GGUF."):  # the reader's view of the header
            continue
        vtype = field.types[0]
        value = field.contents()
        out[name] = (value, vtype, field.types[1]) if vtype == GGUFValueType.ARRAY else (value, vtype)
    return out


def data_hash(path: Union[str, Path]) -> str:
    """sha256 of the tensor data section (from gguf-py's data offset to the end of the file)."""
    from gguf import GGUFReader
    return _sha256(path, GGUFReader(str(path)).data_offset)


def file_hash(path: Union[str, Path]) -> str:
    return _sha256(path, 0)


def _sha256(path: Union[str, Path], start: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def truncate(path: Union[str, Path], size: int) -> Path:
    """Cut the file to ``size`` bytes (negative: that many bytes off the end)."""
    size = os.path.getsize(path) + size if size < 0 else size
    os.truncate(path, size)
    return Path(path)


def patch_bytes(path: Union[str, Path], offset: int, data: bytes) -> Path:
    """Overwrite bytes at ``offset`` (e.g. to corrupt a file on purpose)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return Path(path)
