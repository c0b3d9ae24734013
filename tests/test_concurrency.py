"""Two `gguf-set` runs on one file at once: one refuses with a clear message (pyntk does not wait:
an edit takes a lock for its whole duration, and a waiting run would only find the file changed
under its plan), and the file ends as one of the two complete edits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import ggufs
import pytest

from pyntk.edit import plan_set
from pyntk.writer import TEMP_MARK, apply

# Runs the CLI with a pause at the start of the tensor data copy, the lock held: it creates the file
# argv[1] when it gets there, and goes on once the file argv[2] exists.
PAUSED = r"""
import os, sys, time
from pyntk import writer
from pyntk.cli import main

copy_range = writer._copy_range
def paused(*args):
    open(sys.argv[1], "w").close()
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
    copy_range(*args)
writer._copy_range = paused
sys.exit(main(sys.argv[3:]))
"""
REFUSALS = ("another pyntk process is editing this file right now", "the file changed while this edit")


def cli(*args):
    return [sys.executable, "-m", "pyntk.cli", *map(str, args)]


def finished(proc):
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def complete_edits(model, tmp_path, *alphas):
    """Hash of the file after each edit alone."""
    hashes = []
    for alpha in alphas:
        copy = tmp_path / "reference" / model.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(model, copy)
        apply(plan_set(copy, alpha=alpha))
        hashes.append(ggufs.file_hash(copy))
    shutil.rmtree(tmp_path / "reference")
    return hashes


def wait_for(path, proc):
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)


def assert_refused(code, err):
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("pyntk: error: "), err
    assert any(r in lines[0] for r in REFUSALS), lines[0]


def test_a_second_run_during_a_rewrite_refuses(tmp_path):
    model = ggufs.write_model(tmp_path / "m.gguf", data_bytes=1 << 20)
    before = ggufs.file_hash(model)
    (edit_a,) = complete_edits(model, tmp_path, 4)
    here, go = tmp_path / "paused", tmp_path / "go"
    a = subprocess.Popen([sys.executable, "-c", PAUSED, here, go, "gguf-set", "--alpha", "4", "--yes", model],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(here, a)  # A holds the lock, half way through its rewrite
        b = subprocess.run(cli("gguf-set", "--alpha", "8", "--yes", model), capture_output=True, text=True,
                           timeout=120)
        assert_refused(b.returncode, b.stderr)
        assert ggufs.file_hash(model) == before
    finally:
        go.touch()
    code, err = finished(a)
    assert code == 0, err
    assert ggufs.file_hash(model) == edit_a
    assert [p for p in os.listdir(tmp_path) if TEMP_MARK in p] == []


@pytest.mark.parametrize("mode", ["rewrite", "in-place"])
def test_two_runs_at_once_end_in_one_complete_edit(tmp_path, mode):
    """No pauses: whatever the interleaving, the file is one of the two edits, complete."""
    pristine = ggufs.write_model(tmp_path / "pristine.gguf", data_bytes=32 << 20)
    if mode == "in-place":
        apply(plan_set(pristine, alpha=1.5))
    model = tmp_path / "m.gguf"
    edits = complete_edits(shutil.copyfile(pristine, model), tmp_path, 2, 8)
    for _ in range(3):
        shutil.copyfile(pristine, model)
        runs = [subprocess.Popen(cli("gguf-set", "--alpha", alpha, "--yes", model), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for alpha in (2, 8)]
        results = [finished(p) for p in runs]
        for code, err in results:
            if code != 0:
                assert_refused(code, err)
        assert any(code == 0 for code, _ in results)
        assert ggufs.file_hash(model) in edits
        assert [p for p in os.listdir(tmp_path) if TEMP_MARK in p] == []
