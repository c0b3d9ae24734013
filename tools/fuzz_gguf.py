#!/usr/bin/env python3
"""Fuzz pyntk's GGUF reading and editing with corrupted files.

    python tools/fuzz_gguf.py --minutes 5           random cases until the time is up
    python tools/fuzz_gguf.py --cases 500 --seed 3  a fixed number of cases
    python tools/fuzz_gguf.py --large               also the >4 GiB rewrite check (writes 4 GiB)

A case takes a valid file (made by tests/ggufs.py, or the real test model's key/values with small
tensors; each also after a pyntk edit, so that pyntk's own keys are there), corrupts it (truncated,
bytes flipped, absurd counts and lengths, rope and pyntk keys given other values and types, keys
duplicated, removed or moved, huge strings, pyntk's layout hint pointed elsewhere), then reads it,
edits it (plan_set/plan_reset + apply, in place, rewritten or to -o) or runs the CLI on it.

A case passes when it ends in a PyntkError (from the CLI: one `pyntk: error:` line and exit code 1)
with the input byte-identical, or in a correct result: the intended values read back, the tensor
infos and data unchanged, and gguf-reset then gives back the original keys. No case may leave a
temporary file, take longer than CASE_SECONDS, or read a file differently with the layout hint than
without it. tests/test_fuzz_pyntk/edit.py and pyntk/writer.py runs a quick, derandomized set of the same cases; the
result of a long run is in docs/HARDENING.md.

A developer script, long on purpose: the corruptions, the operations and their checks are one
fuzzer, shared by tests/test_fuzz_gguf_edit.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import ggufs  # noqa: E402
from gguf import GGUFValueType  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pyntk.cli import main as cli_main  # noqa: E402
from pyntk.errors import PyntkError  # noqa: E402
from pyntk.edit import plan_reset, plan_set  # noqa: E402
from pyntk.llamacpp import file_key_types  # noqa: E402
from pyntk.llamacpp import read as read_view  # noqa: E402
from pyntk.record import LAYOUT_KEY, RECORD_PREFIX, read_original, read_record  # noqa: E402
from pyntk.writer import TEMP_MARK, apply  # noqa: E402
from pyntk.gguf_file import GGUFFile, encode_value  # noqa: E402

T = GGUFValueType
CASE_SECONDS = 60  # a case running longer is a hang
MODEL = Path(os.environ.get("PYNTK_TEST_MODEL", ROOT / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"))


# --- files as parts, so that entries can be changed and the file put together again -------------

@dataclass
class Parts:
    version: int
    entries: List[Tuple[Any, int, bytes]]  # key (str, or bytes that are not UTF-8), type, encoded value
    tensor_count: int
    infos: bytes  # tensor infos, copied verbatim (offsets are relative to the data section)
    data: bytes
    alignment: int = 32

    def assemble(self) -> Tuple[bytes, List[Tuple[int, int, int]]]:
        """The file's bytes, and (start, value_start, end) of each entry."""
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, self.tensor_count, len(self.entries)))
        spans = []
        for key, vtype, value in self.entries:
            start = len(out)
            out += encode_value(T.STRING, key) + struct.pack("<I", vtype)
            spans.append((start, len(out), len(out) + len(value)))
            out += value
        out += self.infos
        out += bytes(-len(out) % self.alignment)
        return bytes(out + self.data), spans

    def keys(self) -> List[str]:
        return [k for k, _, _ in self.entries]


def parts_of(path: Path) -> Parts:
    g = GGUFFile(str(path))
    raw = path.read_bytes()
    entries = [(e.key, int(e.type), raw[e.value_start:e.end]) for e in g.entries.values()]
    return Parts(g.version, entries, g.tensor_count, raw[g.kv_end:g.tensor_info_end], raw[g.data_offset:],
                 g.alignment)


def make_bases(directory: Path, model: Optional[Path] = MODEL) -> Dict[str, Parts]:
    """Valid files to corrupt, each also after `gguf-set --alpha 2` (pyntk's record in it)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "llama": ggufs.write_model(directory / "llama.gguf", vocab_size=300, merges=50),
        # a model declaring its own yarn scaling: every rope.scaling key is there to corrupt
        "qwen2-yarn": ggufs.write_model(directory / "qwen2.gguf", "qwen2", context_length=16384, **{
            "qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
            "qwen2.rope.scaling.original_context_length": 4096, "qwen2.rope.scaling.attn_factor": 1.0}),
        "gemma3": ggufs.write_model(directory / "gemma3.gguf", "gemma3", vocab_size=64),
    }
    bases = {name: parts_of(path) for name, path in files.items()}
    if model is not None and model.exists():
        # The real key/values (49152-token vocabulary) with small tensors: a file small enough to
        # rewrite in every case. Tensor infos do not depend on the key/values before them.
        small = bases["llama"]
        bases["real"] = replace(parts_of_metadata(model), tensor_count=small.tensor_count,
                                infos=small.infos, data=small.data)
        files["real"] = directory / "real.gguf"
        files["real"].write_bytes(bases["real"].assemble()[0])
    for name in list(files):
        apply(plan_set(files[name], alpha=2))
        bases[name + "-edited"] = parts_of(files[name])
        files[name].unlink()
    return bases


def parts_of_metadata(path: Path) -> Parts:
    """A file's key/values only (no tensors), read without loading its tensor data."""
    g = GGUFFile(str(path))
    with open(path, "rb") as f:
        head = f.read(g.kv_end)
    entries = [(e.key, int(e.type), head[e.value_start:e.end]) for e in g.entries.values()]
    return Parts(g.version, entries, 0, b"", b"", g.alignment)


# --- corruptions -----------------------------------------------------------------------------------

INT_TYPES = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
             T.UINT64: "<Q", T.INT64: "<q"}
ABSURD = st.sampled_from([0, 1, 2**31 - 1, 2**32, 2**63 - 1, 2**64 - 1]) | st.integers(0, 2**64 - 1)
WORDS = ["none", "linear", "yarn", "longrope", "ntk", "llama", "gpt2", "bert", "", " ", "{}", "[]", "null",
         '{"method":"ntk","alpha":"x"}', "1e4", "NaN"]
FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -1.0, 0.5, 1.0, 2.0, 1e-30,
                          1e30, 3.4e38, 10000.0, 4096.0]) | st.floats(width=32)


def _int_value(draw, vtype) -> bytes:
    fmt = INT_TYPES[vtype]
    bits = struct.calcsize(fmt) * 8
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt[1].islower() else (0, 2**bits - 1)
    edges = [v for v in (0, 1, 2, 3, 64, 4096, 8192, 2**31, 2**32 - 1, lo, hi, -1) if lo <= v <= hi]
    return struct.pack(fmt, draw(st.sampled_from(edges) | st.integers(lo, hi)))


def hostile_value(draw) -> Tuple[int, bytes]:
    """A value of any type, biased to what breaks readers: edges, NaN, wrong words, huge sizes."""
    kind = draw(st.sampled_from(["int", "float", "bool", "string", "huge", "bad-utf8", "array", "nested"]))
    if kind == "int":
        vtype = draw(st.sampled_from(list(INT_TYPES)))
        return int(vtype), _int_value(draw, vtype)
    if kind == "float":
        vtype = draw(st.sampled_from([T.FLOAT32, T.FLOAT64]))
        return int(vtype), struct.pack("<f" if vtype == T.FLOAT32 else "<d", draw(FLOATS))
    if kind == "bool":
        return int(T.BOOL), bytes([draw(st.sampled_from([0, 1, 2, 255]))])
    if kind == "string":
        return int(T.STRING), encode_value(T.STRING, draw(st.sampled_from(WORDS) | st.text(max_size=12)))
    if kind == "huge":
        return int(T.STRING), encode_value(T.STRING, "x" * draw(st.sampled_from([1 << 16, 1 << 20, 1 << 23])))
    if kind == "bad-utf8":
        return int(T.STRING), encode_value(T.STRING, b"\xff\xfe" + draw(st.binary(max_size=4)))
    if kind == "array":
        atype = draw(st.sampled_from([T.UINT64, T.UINT32, T.INT32, T.FLOAT32, T.STRING, T.BOOL]))
        n = draw(st.integers(0, 3))
        if atype == T.STRING:
            items = [encode_value(T.STRING, draw(st.sampled_from(WORDS))) for _ in range(n)]
        elif atype in INT_TYPES:
            items = [_int_value(draw, atype) for _ in range(n)]
        elif atype == T.FLOAT32:
            items = [struct.pack("<f", draw(FLOATS)) for _ in range(n)]
        else:
            items = [b"\x01"] * n
        return int(T.ARRAY), struct.pack("<IQ", int(atype), n) + b"".join(items)
    depth = draw(st.integers(1, 6))  # arrays of arrays, deeper than readers allow
    inner = struct.pack("<IQ", int(T.UINT8), 1) + b"\x07"
    for _ in range(depth):
        inner = struct.pack("<IQ", int(T.ARRAY), 1) + inner
    return int(T.ARRAY), inner


def _interesting(parts: Parts) -> List[str]:
    """Keys pyntk reads or writes, present or not: the managed keys and pyntk's record."""
    keys = [k for k in parts.keys() if isinstance(k, str)]
    arch = next((v[8:].decode(errors="replace") for k, t, v in parts.entries
                 if k == "general.architecture" and t == T.STRING), "llama")
    wanted = list(file_key_types(arch)) + [f"{arch}.rope.dimension_count", f"{arch}.rope.scaling.attn_factor",
                                        f"{arch}.rope.scaling.finetuned", f"{arch}.rope.freq_base_swa",
                                        f"{arch}.attention.head_count", f"{arch}.embedding_length",
                                        "general.architecture", "general.alignment"]
    mine = [k for k in keys if k.startswith(RECORD_PREFIX) or k.startswith(arch + ".")]
    return sorted(set(wanted + mine))


def corrupt(draw, parts: Parts) -> Tuple[bytes, str]:
    """The corrupted file and the kind of corruption."""
    blob, spans = parts.assemble()
    kind = draw(st.sampled_from(["truncate", "flip", "count", "field", "retype", "retype", "duplicate",
                                 "huge-key", "drop", "move", "layout"]))
    meta_end = len(blob) - len(parts.data)
    keys = parts.keys()
    interesting = _interesting(parts)
    present = [k for k in interesting if k in keys]

    def pick_entry() -> int:
        if present and draw(st.booleans()):
            return keys.index(draw(st.sampled_from(present)))
        return draw(st.integers(0, len(keys) - 1))

    if kind == "truncate":
        end = meta_end if draw(st.booleans()) else len(blob)
        return blob[:draw(st.integers(0, max(0, end - 1)))], kind
    if kind == "flip":
        data = bytearray(blob)
        for _ in range(draw(st.integers(1, 8))):
            if draw(st.booleans()):
                start, _, end = spans[pick_entry()]
                where = draw(st.integers(start, end - 1))
            else:
                where = draw(st.integers(0, len(data) - 1))
            data[where] = draw(st.integers(0, 255))
        return bytes(data), kind
    if kind == "count":
        data = bytearray(blob)
        struct.pack_into("<Q", data, draw(st.sampled_from([8, 16])), draw(ABSURD))
        return bytes(data), kind
    if kind == "field":
        data = bytearray(blob)
        start, value_start, _ = spans[pick_entry()]
        what = draw(st.sampled_from(["key length", "type", "length"]))
        if what == "key length":
            struct.pack_into("<Q", data, start, draw(ABSURD))
        elif what == "type":
            struct.pack_into("<I", data, value_start - 4, draw(ABSURD) & 0xFFFFFFFF)
        elif value_start + 12 <= len(data):
            # a string's length, or an array's element type and count
            struct.pack_into("<Q", data, value_start + draw(st.sampled_from([0, 4])), draw(ABSURD))
        return bytes(data), kind
    entries = list(parts.entries)
    if kind == "retype":  # a rope or pyntk key with another value and type, or added
        name = draw(st.sampled_from(interesting))
        vtype, value = hostile_value(draw)
        if name in keys:
            entries[keys.index(name)] = (name, vtype, value)
        else:
            entries.insert(draw(st.integers(0, len(entries))), (name, vtype, value))
    elif kind == "duplicate":
        i = pick_entry()
        if draw(st.booleans()):
            entries.insert(draw(st.integers(0, len(entries))), entries[i])
        else:  # another entry renamed to this key
            j = draw(st.integers(0, len(entries) - 1))
            entries[j] = (entries[i][0],) + entries[j][1:]
    elif kind == "huge-key":
        name = "k" * draw(st.sampled_from([1 << 10, 1 << 20])) if draw(st.booleans()) else b"\xc3\x28bad"
        entries.insert(draw(st.integers(0, len(entries))), (name, int(T.UINT32), b"\0" * 4))
    elif kind == "drop":
        del entries[pick_entry()]
    elif kind == "move":
        entries.insert(draw(st.integers(0, len(entries) - 1)), entries.pop(pick_entry()))
    elif kind == "layout":  # pyntk's layout hint pointing at other entry boundaries, or malformed
        ends = sorted({end for _, _, end in spans})
        kv_end = ends[-1]
        if draw(st.booleans()):
            values = [draw(st.sampled_from(ends)), draw(st.sampled_from([kv_end, kv_end + 32, kv_end - 8]
                                                                         + ends))]
            value = struct.pack("<IQ", int(T.UINT64), 2) + struct.pack("<2Q", *values)
            vtype = int(T.ARRAY)
        else:
            vtype, value = hostile_value(draw)
        if LAYOUT_KEY in keys:
            entries[keys.index(LAYOUT_KEY)] = (LAYOUT_KEY, vtype, value)
        else:
            entries.insert(draw(st.integers(0, len(entries))), (LAYOUT_KEY, vtype, value))
    return replace(parts, entries=entries).assemble()[0], kind


# --- checks ------------------------------------------------------------------------------------------

class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"case ran longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _is_parameter_error(exc: ValueError) -> bool:
    """Raised by plan_target's own checks or by RopeScaling's (gguf-set's options do not fit)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return (any(f.name == "plan_target" for f in frames)
            and frames[-1].filename.endswith(("target.py", "scaling.py", "llamacpp.py")))


def attempt(call: Callable[[], Any], *, parameters: bool = False):
    """(result, None), or (None, error) for an error the user is meant to see; anything else escapes."""
    try:
        return call(), None
    except PyntkError as e:
        assert str(e) and "\n" not in str(e), f"error message is not one line: {e!r}"
        return None, e
    except ValueError as e:
        # Parameters that do not fit the model (e.g. --ctx below its context) are ValueErrors by design.
        if parameters and _is_parameter_error(e):
            return None, e
        raise


def entries_of(g: GGUFFile, blob: bytes) -> List[Tuple[str, int, bytes]]:
    return [(k, int(e.type), blob[e.value_start:e.end]) for k, e in g.entries.items()]


def tensors_of(g: GGUFFile) -> list:
    return [(t.name, t.shape, t.type, t.offset, t.nbytes) for t in g.tensors]


def check_read(path: Path, blob: bytes) -> None:
    """Both parses agree; the layout hint may skip bytes, never read differently."""
    full, full_error = attempt(lambda: GGUFFile(str(path)))
    hinted, hinted_error = attempt(lambda: GGUFFile(str(path), layout_key=LAYOUT_KEY))
    assert not (full is not None and hinted is None), f"only the hinted parse failed: {hinted_error}"
    if hinted is not None:
        if full is not None:
            assert entries_of(hinted, blob) == entries_of(full, blob)[:len(hinted.entries)]
            assert (tensors_of(hinted), hinted.data_offset) == (tensors_of(full), full.data_offset)
        else:
            assert hinted.partial, f"the hinted parse read a file the full parse refuses: {full_error}"
        for read in (read_view, read_original, read_record):
            got = attempt(lambda: read(hinted))
            if full is not None:  # everything pyntk reads lies before the point where the hint stopped
                expected = attempt(lambda: read(full))
                assert got[0] == expected[0] and (got[1] is None) == (expected[1] is None), \
                    f"{read.__name__} misread with the layout hint: {got} != {expected}"


def _without_path(info) -> dict:
    d = info.to_dict()
    d.pop("path")
    return d


def check_result(plan, written: Path, blob: bytes) -> None:
    """A finished gguf-set: the target's values read back, tensors untouched, only values changed."""
    new = GGUFFile(str(written), layout_key=LAYOUT_KEY)
    raw = written.read_bytes()
    old = plan.gguf
    assert tensors_of(new) == tensors_of(old), "tensor infos changed"
    assert raw[new.data_offset:] == blob[old.data_offset:], "tensor data changed"
    info, t = read_view(new), plan.target
    got = (info.context_length, info.base, info.scaling_type, info.factor, info.original_context)
    r = t.rope
    assert got == (t.context, r.freq_base, r.scaling_type, r.factor, r.original_context), got
    assert _without_path(read_original(new)) == _without_path(plan.original), "originals changed"
    if plan.in_place and written == Path(plan.source):
        assert len(raw) == len(blob)
        pos = 0
        for lo, hi in sorted((c.old.value_start, c.old.end) for c in plan.changes):
            assert raw[pos:lo] == blob[pos:lo], "bytes outside the changed values changed"
            pos = max(pos, hi)
        assert raw[pos:] == blob[pos:], "bytes outside the changed values changed"


def check_reset(written: Path, blob: bytes, original_entries, original_info) -> None:
    """gguf-reset after a successful edit gives back the original key/values (all of them)."""
    plan, error = attempt(lambda: plan_reset(written))
    if error is None:
        _, error = attempt(lambda: apply(plan))
    if error is not None:
        # only a file whose skipped region (vocabulary) is corrupt may be refused: a rewrite reads it all
        assert original_entries is None, f"reset refused: {error}"
        return
    g = GGUFFile(str(written))
    raw = written.read_bytes()
    assert not [k for k in g.entries if k.startswith(RECORD_PREFIX)], "pyntk keys left after reset"
    assert _without_path(read_view(g)) == original_info, "reset did not restore the original values"
    if original_entries is not None:
        assert entries_of(g, raw) == original_entries, "reset did not restore the original key/values"


def _originals(path: Path, blob: bytes):
    """The input's key/values if it is fully readable and unedited (reset must restore exactly these)."""
    g, error = attempt(lambda: GGUFFile(str(path)))
    if error is not None:
        return None, True
    record = attempt(lambda: read_record(g))[0]
    return (entries_of(g, blob) if record is None else None), False


REQUESTS = st.sampled_from([
    dict(alpha=2.0), dict(alpha=4.0), dict(alpha=1.0), dict(factor=2.0), dict(method="yarn", factor=4.0),
    dict(method="linear", factor=3.0), dict(ctx=20000), dict(ctx=5000), dict(base=1e6), dict(method="none"),
    dict(alpha=4.0, force=True),
])


def _argv(request: Dict[str, Any]) -> List[str]:
    out = []
    for k, v in request.items():
        out += ["--force"] if k == "force" else [f"--{k}", str(v)]
    return out


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def run_case(draw, bases: Dict[str, Parts], workdir: Path) -> str:
    """One fuzz case in a fresh directory under ``workdir``; returns a label for statistics."""
    name = draw(st.sampled_from(sorted(bases)))
    blob, kind = corrupt(draw, bases[name])
    op = draw(st.sampled_from(["read", "set", "set", "reset", "cli-set", "cli-reset"]))
    to_output = op != "read" and draw(st.integers(0, 4)) == 0
    directory = Path(tempfile.mkdtemp(dir=workdir))
    try:
        path = directory / "model.gguf"
        path.write_bytes(blob)
        output = directory / "out.gguf" if to_output else None
        with time_limit(CASE_SECONDS):
            outcome = _run(draw, op, path, output, blob)
        if output is not None:
            assert path.read_bytes() == blob, "the input changed although the edit went to -o"
        leftovers = [p.name for p in directory.iterdir() if TEMP_MARK in p.name]
        assert not leftovers, f"temporary files left: {leftovers}"
        return f"{kind} {op}: {outcome}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run(draw, op: str, path: Path, output: Optional[Path], blob: bytes) -> str:
    written = output or path
    if op == "read":
        check_read(path, blob)
        assert path.read_bytes() == blob, "reading changed the file"
        return "read"
    original_entries, unreadable = _originals(path, blob)
    before = attempt(lambda: GGUFFile(str(path), layout_key=LAYOUT_KEY))[0]
    if op in ("set", "reset"):
        if op == "set":
            request = draw(REQUESTS)
            plan, error = attempt(lambda: plan_set(path, output=output, **request), parameters=True)
        else:
            plan, error = attempt(lambda: plan_reset(path, output=output))
        if error is None:
            _, error = attempt(lambda: apply(plan))
        if error is not None:
            assert path.read_bytes() == blob and (output is None or not output.exists())
            return "refused"
        if plan.nothing_to_do:
            assert path.read_bytes() == blob
            return "nothing to do"
        info = _without_path(plan.original)
        if op == "reset":
            new = GGUFFile(str(written), layout_key=LAYOUT_KEY)
            assert _without_path(read_view(new)) == info
            assert not [k for k in new.entries if k.startswith(RECORD_PREFIX)]
            assert written.read_bytes()[new.data_offset:] == blob[plan.gguf.data_offset:]
            return "reset"
        check_result(plan, written, blob)
        check_reset(written, blob, None if unreadable else original_entries, info)
        return plan.mode
    # the CLI: exit code 0 and a correct file, or 1 and one line naming the problem
    if op == "cli-set":
        argv = ["gguf-set", *_argv(draw(REQUESTS))]
    else:
        argv = ["gguf-reset"]
    argv += ["--yes", "--json", str(path)] + (["-o", str(output)] if output else [])
    code, out, err = run_cli(argv)
    if code != 0:
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("pyntk: error: "), (code, err)
        assert path.read_bytes() == blob, "input changed although the CLI failed"
        return "refused"
    report = json.loads(out)
    if not report["applied"]:
        assert path.read_bytes() == blob
        return "cli nothing to do"
    new = GGUFFile(str(written), layout_key=LAYOUT_KEY)
    assert tensors_of(new) == tensors_of(before), "tensor infos changed"
    assert written.read_bytes()[new.data_offset:] == blob[before.data_offset:], "tensor data changed"
    info = read_view(new)
    if op == "cli-set":
        t = report["target"]
        r = t["llama_cpp"]
        assert (info.context_length, info.base, info.scaling_type, info.factor) == \
            (t["context"], r["freq_base"], r["scaling_type"], r["factor"])
        assert read_original(new).context_length == report["original"]["context_length"]
    else:
        assert not [k for k in new.entries if k.startswith(RECORD_PREFIX)]
        assert info.context_length == report["original"]["context_length"]
    return "cli " + report["mode"]


# --- the long run ----------------------------------------------------------------------------------

@dataclass
class Tally:
    cases: int = 0
    labels: Dict[str, int] = field(default_factory=dict)
    failures: List[str] = field(default_factory=list)


def campaign(bases: Dict[str, Parts], workdir: Path, *, cases: int, seconds: float, first_seed: int,
             batch: int = 100) -> Tally:
    tally = Tally()
    rng = random.Random(first_seed)
    deadline = time.monotonic() + seconds

    def one(data):
        label = run_case(data.draw, bases, workdir)
        tally.cases += 1
        tally.labels[label] = tally.labels.get(label, 0) + 1

    while tally.cases < cases and time.monotonic() < deadline:
        # batches of random cases, each with its own seed; a failure ends a batch after shrinking
        run = settings(max_examples=min(batch, cases - tally.cases), deadline=None, database=None,
                       phases=[Phase.generate, Phase.shrink],
                       suppress_health_check=list(HealthCheck))(given(data=st.data())(one))
        try:
            seed(rng.getrandbits(64))(run)()
        except Exception as e:  # a failure: report it (hypothesis has shrunk it) and go on
            tally.failures.append("".join(traceback.format_exception_only(type(e), e)).strip())
            print(f"FAILURE {len(tally.failures)}:\n" + traceback.format_exc(), file=sys.stderr, flush=True)
        print(f"{tally.cases} cases, {len(tally.failures)} failures", file=sys.stderr, flush=True)
    return tally


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="time budget (default 5)")
    p.add_argument("--cases", type=int, default=10**9, help="stop after this many cases")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    p.add_argument("--large", action="store_true",
                   help="also check the rewrite of a sparse >4 GiB file (writes 4 GiB, about 35 s)")
    args = p.parse_args(argv)
    first_seed = args.seed if args.seed is not None else int(time.time())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyntk-fuzz-") as tmp:
        bases = make_bases(Path(tmp) / "bases")
        tally = campaign(bases, Path(tmp), cases=args.cases, seconds=args.minutes * 60, first_seed=first_seed)
        elapsed = time.monotonic() - started
        if args.large:
            import test_large_files
            test_large_files.check_rewrite_over_4_gib(Path(tmp))
            print("large: the >4 GiB rewrite checked out", flush=True)
    print(f"seed {first_seed}: {tally.cases} cases in {elapsed:.0f} s on bases "
          f"{', '.join(sorted(bases))}; {len(tally.failures)} failures")
    for label, n in sorted(tally.labels.items()):
        print(f"  {n:6d}  {label}")
    for f in tally.failures:
        print("FAILURE:", f)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
