"""Files over 4 GiB: tensors past 4 GiB keep their data (64-bit offsets everywhere) and the edit runs
in little memory, never reading the tensor data into it.

The files are sparse: a first tensor of 4 GiB is a hole, the small tensors after it are real bytes,
checked before and after. The in-place edit runs in the suite. A rewrite has to copy the hole
(copy_file_range writes it out on ext4: 4 GiB of disk and about 15 s a rewrite here), so it runs
only with PYNTK_TEST_LARGE=1 or `python tools/fuzz_gguf.py --large`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ggufs
import pytest

from pyntk.edit import plan_set
from pyntk.llamacpp import read as read_view
from pyntk.writer import apply
from pyntk.gguf_file import GGUFFile

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")

HOLE = (4 << 30) + (8 << 20)
MAX_RSS = 200 << 20  # the CLI's whole process: about 35 MiB (Python, numpy, gguf); the data is 4 GiB


def markers(path):
    """The bytes of every tensor after the hole, by name (small, and all past 4 GiB)."""
    g = GGUFFile(str(path))
    out = {}
    with open(path, "rb") as f:
        for t in g.tensors[1:]:
            assert g.data_offset + t.offset > 2**32
            f.seek(g.data_offset + t.offset)
            out[t.name] = f.read(t.nbytes)
    return out


# Runs the CLI, then prints its peak resident memory: VmHWM counts this process's own pages only,
# unlike a child's rusage, which also counts the memory of the parent that forked it.
PEAK = r"""
import sys
from pyntk.cli import main
code = main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("peak", int(line.split()[1]) * 1024, file=sys.stderr)
sys.exit(code)
"""


def peak_rss(*args):
    """`pyntk ARGS --yes --json` in its own process: its JSON report and peak resident memory."""
    proc = subprocess.run([sys.executable, "-c", PEAK, *map(str, args), "--yes", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    word, peak = proc.stderr.splitlines()[-1].split()
    assert word == "peak"
    return json.loads(proc.stdout), int(peak)


def big_model(path: Path, *, edited: bool) -> Path:
    """A sparse model over 4 GiB; ``edited``: with pyntk's record already in it (as after
    `gguf-set --alpha 2`), so that the next edit is in place."""
    if not edited:
        return ggufs.write_model(path, hole_bytes=HOLE)
    small = ggufs.write_model(path.with_name("small.gguf"))
    apply(plan_set(small, alpha=2))
    kv = ggufs.kv_of(small)
    small.unlink()
    return ggufs.write_gguf(path, kv, hole_bytes=HOLE)  # same key/values: the record carries over


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_in_place_edit_of_a_file_over_4_gib(tmp_path):
    model = big_model(tmp_path / "big.gguf", edited=True)
    before = markers(model)
    size = os.path.getsize(model)
    assert size > 2**32 and allocated(model) < 1 << 20
    report, rss = peak_rss("gguf-set", "--alpha", "4", model)
    assert report["mode"] == "in-place"
    assert os.path.getsize(model) == size and markers(model) == before
    assert allocated(model) < 1 << 20  # the hole was not read into memory nor written
    assert rss < MAX_RSS
    assert read_view(model).base == pytest.approx(report["target"]["llama_cpp"]["freq_base"])


def check_rewrite_over_4_gib(directory: Path) -> None:
    """gguf-set (a rewrite) then gguf-reset (another) of a sparse >4 GiB file."""
    model = big_model(directory / "big.gguf", edited=False)
    try:
        before, g = markers(model), GGUFFile(str(model))
        with open(model, "rb") as f:
            head = f.read(g.data_offset)
        report, rss = peak_rss("gguf-set", "--alpha", "4", model)
        assert report["mode"] == "rewrite" and rss < MAX_RSS, rss
        assert markers(model) == before
        new = GGUFFile(str(model))
        assert [(t.name, t.offset) for t in new.tensors] == [(t.name, t.offset) for t in g.tensors]
        assert read_view(model).base == pytest.approx(report["target"]["llama_cpp"]["freq_base"])
        report, rss = peak_rss("gguf-reset", model)
        assert report["mode"] == "rewrite" and rss < MAX_RSS, rss
        assert markers(model) == before and os.path.getsize(model) == g.file_size
        with open(model, "rb") as f:
            assert f.read(g.data_offset) == head
    finally:
        model.unlink(missing_ok=True)


@pytest.mark.skipif(not os.environ.get("PYNTK_TEST_LARGE"), reason="writes 4 GiB twice (about 35 s): "
                    "set PYNTK_TEST_LARGE=1 or run tools/fuzz_gguf.py --large")
def test_rewrite_of_a_file_over_4_gib(tmp_path):
    check_rewrite_over_4_gib(tmp_path)
