"""A rewriting `gguf-set` killed with SIGKILL anywhere leaves the complete old file or the complete new
one, and the next run removes (and names) the temporary file the killed one left.

Two ways to kill it: at every step of the rewrite (each chunk of the copy, and before and after
the fsync, the verification and the rename), by a process that runs the CLI and sends itself
SIGKILL there; and from outside, `python -m pyntk.cli gguf-set` killed when its temporary file
reaches given sizes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import ggufs
import pytest

from pyntk.cli import main
from pyntk.edit import plan_set
from pyntk.writer import TEMP_MARK, apply
from pyntk.gguf_file import GGUFFile

CHUNKS = 32  # copy chunks in the step-by-step test

# Runs `pyntk gguf-set ARGS` on each model in turn, in a forked child that SIGKILLs itself at step
# KILL (1 = the metadata is written and the copy starts; then each chunk of the copy; then the steps
# after it). Forking from one process that imported pyntk once keeps 40 runs cheap.
STEPPED = r"""
import os, signal, sys
from pyntk import writer
from pyntk.cli import main

chunk, models, argv = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
writer.COPY_CHUNK = chunk
step, kill_at = 0, None

def event():
    global step
    step += 1
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def around(owner, name):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        event()
        result = real(*args, **kwargs)
        event()
        return result
    setattr(owner, name, wrapper)

copy_range = writer._copy_range
def counted_copy(src, dst, src_off, dst_off, length, progress):
    def each_chunk(n):
        event()
        if progress is not None:
            progress(n)
    event()
    copy_range(src, dst, src_off, dst_off, length, each_chunk)
writer._copy_range = counted_copy
around(os, "fsync")  # the temporary file's, then the directory's
around(writer, "_verify")
around(os, "replace")

for kill_at, model in enumerate(models, start=1):
    pid = os.fork()
    if pid == 0:
        quiet = os.open(os.devnull, os.O_WRONLY)  # the CLI's output would mix with ours
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        os._exit(main(argv + [model]))
    _, status = os.waitpid(pid, 0)  # reaped: its temporary file now belongs to a dead process
    print(kill_at, os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status), flush=True)
"""


def temps(directory):
    return sorted(p.name for p in directory.iterdir() if TEMP_MARK in p.name)


def edited_hash(model, tmp_path):
    """The hash of the complete new file: the same edit carried out without interruption."""
    copy = tmp_path / "reference" / model.name
    copy.parent.mkdir()
    shutil.copyfile(model, copy)
    apply(plan_set(copy, alpha=4))
    digest = ggufs.file_hash(copy)
    shutil.rmtree(copy.parent)
    return digest


def next_run_recovers(capsys, model, new, had_temp):
    """The next gguf-set removes and names a leftover temporary file and ends with the new file."""
    code = main(["gguf-set", "--alpha", "4", "--yes", str(model)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert ("removed" in err and TEMP_MARK in err) == had_temp, err
    assert temps(model.parent) == []
    assert ggufs.file_hash(model) == new


def test_sigkill_at_every_step_of_a_rewrite(tmp_path, capsys):
    source = ggufs.write_model(tmp_path / "source.gguf", vocab_size=2000, merges=500, data_bytes=4 << 20)
    old, new = ggufs.file_hash(source), edited_hash(source, tmp_path)
    g = GGUFFile(str(source))
    chunk = -(-(g.file_size - g.data_offset) // CHUNKS)
    # steps: copy start, CHUNKS chunks, fsync of the file (before, after), verify (2), rename (2),
    # fsync of the directory (2); a kill past the last step lets the run finish.
    steps = 1 + CHUNKS + 8 + 1
    models = []
    for k in range(1, steps + 1):
        (tmp_path / str(k)).mkdir()
        models.append(tmp_path / str(k) / "m.gguf")
        shutil.copyfile(source, models[-1])
    proc = subprocess.run([sys.executable, "-c", STEPPED, str(chunk), ",".join(map(str, models)),
                           "gguf-set", "--alpha", "4", "--yes"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    outcome = dict(line.split() for line in proc.stdout.splitlines())
    killed = [k for k in range(1, steps + 1) if outcome[str(k)] == str(int(signal.SIGKILL))]
    assert killed == list(range(1, steps)) and outcome[str(steps)] == "0"  # the last run finished
    replaced = 1 + CHUNKS + 6  # the first step at which the new file is in place
    for k, model in enumerate(models, start=1):
        left = temps(model.parent)
        if k < replaced:
            assert ggufs.file_hash(model) == old and len(left) == 1, (k, left)
        else:
            assert ggufs.file_hash(model) == new and left == [], (k, left)
        next_run_recovers(capsys, model, new, had_temp=k < replaced)
        shutil.rmtree(model.parent)


def test_sigkill_from_outside_while_the_temporary_file_grows(tmp_path, capsys):
    """The real command in its own process, killed when its temporary file reaches given sizes."""
    model = ggufs.write_model(tmp_path / "m.gguf", data_bytes=160 << 20)
    pristine = tmp_path / "pristine.gguf"
    shutil.copyfile(model, pristine)
    old, new = ggufs.file_hash(model), edited_hash(model, tmp_path)
    size = os.path.getsize(model)
    tmp = tmp_path / f".{model.name}{TEMP_MARK}"
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        proc = subprocess.Popen([sys.executable, "-m", "pyntk.cli", "gguf-set", "--alpha", "4", "--yes",
                                 str(model)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        path = tmp.with_name(tmp.name + str(proc.pid))
        while proc.poll() is None:
            try:
                if os.path.getsize(path) >= fraction * size:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
        # killed in the copy: the old file and its temporary file; killed late: possibly the new one
        digest = ggufs.file_hash(model)
        assert digest in (old, new), fraction
        had_temp = bool(temps(tmp_path))
        assert had_temp or digest == new, fraction
        next_run_recovers(capsys, model, new, had_temp)
        shutil.copyfile(pristine, model)


@pytest.mark.parametrize("mine", [True, False])
def test_a_leftover_temporary_file_with_this_process_id_is_removed(tmp_path, capsys, mine):
    # Temporary files are named by process id, and a process started again in a fresh container
    # often gets the same id: a leftover with our own id is stale (we hold the lock and have not
    # created ours yet). It used to stop every later rewrite with "[Errno 17] File exists".
    model = ggufs.write_model(tmp_path / "m.gguf")
    leftover = tmp_path / f".m.gguf{TEMP_MARK}{os.getpid() if mine else 999_999_999}"
    leftover.write_bytes(b"partial copy")
    new = edited_hash(model, tmp_path)
    next_run_recovers(capsys, model, new, had_temp=True)


def test_a_run_with_nothing_to_do_still_reports_a_leftover_temporary_file(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    model = ggufs.write_model(tmp_path / "m.gguf")
    apply(plan_set(model, alpha=4))
    leftover = tmp_path / f".m.gguf{TEMP_MARK}999999999"
    leftover.write_bytes(b"partial copy")
    fd = os.open(model, os.O_RDONLY)
    try:  # while another edit holds the lock, the file might be its own (a pid from another namespace)
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert main(["gguf-set", "--alpha", "4", "--yes", str(model)]) == 0
        assert leftover.exists() and "removed" not in capsys.readouterr().err
    finally:
        os.close(fd)
    code = main(["gguf-set", "--alpha", "4", "--yes", str(model)])
    out, err = capsys.readouterr()
    assert code == 0 and "nothing to do" in out
    assert f"removed {leftover}" in err and not leftover.exists()
