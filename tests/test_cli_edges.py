"""The command line's rough edges, found by trying to break it (issue 17): Ctrl-C at any moment,
paths that need quoting, options that leave the method open, absurd or bad numbers, special mode
bits and extended attributes, hard links, values changed by other tools, leftover temporary files.

The Ctrl-C tests run the real command in its own process and send it a real SIGINT while it
waits at a chosen step (a wrapper that pauses there, or an import hook for start-up).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import stat
import struct
import subprocess
import sys
import sysconfig
import time

import ggufs
import pytest

from pyntk import evidence
from pyntk.cli import main
from pyntk.edit import plan_set
from pyntk.gguf_file import GGUFFile, encode_value
from pyntk.llamacpp import f32, file_key_types, read as read_view
from pyntk.record import SCALING_KEY
from pyntk.scaling import RopeScaling
from pyntk.writer import TEMP_MARK, apply


@pytest.fixture
def model(tmp_path):
    """A small llama GGUF (training context 4096, 32 rotary dims, base 10000), in a folder whose
    name needs quoting in a shell."""
    folder = tmp_path / "models it's"
    folder.mkdir()
    return ggufs.write_model(folder / "my model.gguf", "llama", context_length=4096, n_embd=128, n_head=4)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyntk: error: "), err
    return lines[0]


def temps(directory):
    return sorted(p.name for p in directory.iterdir() if TEMP_MARK in p.name)


def edited_hash(path, tmp_path, **request):
    """The hash of ``path`` after the edit ``request``, carried out on a copy without interruption."""
    copy = tmp_path / "reference.gguf"
    copy.write_bytes(path.read_bytes())
    apply(plan_set(copy, **request))
    digest = ggufs.file_hash(copy)
    copy.unlink()
    return digest


def in_shell(command):
    """Run a command line as pasted into a shell, `pyntk` being this Python's pyntk."""
    if command.startswith("pyntk "):
        command = f"{shlex.quote(sys.executable)} -m pyntk.cli {command[len('pyntk '):]}"
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)


# --- 1. Ctrl-C says whether the file changed; at start-up, one line and no traceback ----------

# Runs `pyntk ARGV` and stops at the first call of OWNER.NAME (writer's function, or os.fsync),
# creating the file HERE; it waits there for the test's SIGINT.
PAUSED = r"""
import os, sys, time
from pyntk import writer
from pyntk.cli import main

here, owner, name, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
owner = writer if owner == "writer" else os
real = getattr(owner, name)

def paused(*args, **kwargs):
    setattr(owner, name, real)
    open(here, "w").close()
    while True:
        time.sleep(0.01)

setattr(owner, name, paused)
sys.exit(main(argv))
"""


def interrupt(proc, here):
    while not os.path.exists(here):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("mode, owner, step, changed", [
    ("rewrite", "writer", "_copy_range", False),  # copying the tensor data: before the rename
    ("rewrite", "writer", "_fsync_dir", True),  # after the rename, syncing the directory
    ("in-place", "writer", "_patch", False),  # before the write
    ("in-place", "os", "fsync", True),  # written, not yet synced
])
def test_ctrl_c_during_an_edit_says_whether_the_file_changed(model, tmp_path, mode, owner, step, changed):
    if mode == "in-place":
        apply(plan_set(model, alpha=2))
    assert plan_set(model, alpha=4).mode == mode
    old, new = ggufs.file_hash(model), edited_hash(model, tmp_path, alpha=4)
    here = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, here, owner, step, "gguf-set", "--alpha", "4",
                             "--yes", model], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, out, err = interrupt(proc, here)
    line = one_error_line(err)
    assert code == 130, err
    if changed:
        quoted = shlex.quote(str(model))
        assert line == (f"pyntk: error: interrupted after the edit completed: {quoted} has the new values; "
                        f"undo with: pyntk gguf-reset {quoted}")
        assert ggufs.file_hash(model) == new
    else:
        assert line == "pyntk: error: interrupted: nothing changed, the original is intact"
        assert ggufs.file_hash(model) == old
    assert temps(model.parent) == []


# Installed through PYTHONPATH: stops before importing the module PYNTK_TEST_PAUSE_AT, creates the
# file PYNTK_TEST_PAUSED, and waits there for SIGINT.
PAUSE_AT_IMPORT = r"""
import os, sys, time

class PauseAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("PYNTK_TEST_PAUSE_AT"):
            sys.meta_path.remove(self)
            open(os.environ["PYNTK_TEST_PAUSED"], "w").close()
            while True:
                time.sleep(0.01)
        return None

sys.meta_path.insert(0, PauseAtImport())
"""


def console_script():
    path = os.path.join(sysconfig.get_path("scripts"), "pyntk")
    if not os.path.exists(path):
        pytest.skip(f"no `pyntk` console script at {path} (pip install . creates it)")
    return [path]


@pytest.mark.parametrize("entry", ["python -m pyntk.cli", "pyntk"])
@pytest.mark.parametrize("module", ["pyntk.cli._common", "gguf"])  # loading pyntk.cli; the subcommands
def test_ctrl_c_during_start_up_gives_one_line(model, tmp_path, entry, module):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PAUSE_AT_IMPORT)
    here = tmp_path / "paused"
    env = {**os.environ, "PYNTK_TEST_PAUSE_AT": module, "PYNTK_TEST_PAUSED": str(here),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "pyntk.cli"] if entry != "pyntk" else console_script()
    before = ggufs.file_hash(model)
    proc = subprocess.Popen(command + ["gguf-set", "--alpha", "4", "--yes", str(model)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, out, err = interrupt(proc, here)
    assert (code, err) == (130, "pyntk: error: interrupted\n")
    assert ggufs.file_hash(model) == before


# --- 2. every printed command can be pasted into a shell --------------------------------------

def test_printed_commands_quote_paths(model, capsys):
    original = ggufs.file_hash(model)
    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
    undo = out.split("undo with: ", 1)[1].strip()
    assert shlex.split(undo) == ["pyntk", "gguf-reset", str(model)]
    proc = in_shell(undo + " --yes")
    assert proc.returncode == 0, proc.stderr
    assert ggufs.file_hash(model) == original

    cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
    rc, out, _ = cli(capsys, "info", model)
    undo = next(line for line in out.splitlines() if line.lstrip().startswith("undo with"))
    undo = undo.split("undo with", 1)[1].strip()
    assert shlex.split(undo) == ["pyntk", "gguf-reset", str(model)]
    assert in_shell(undo + " --yes").returncode == 0 and ggufs.file_hash(model) == original

    rc, _, err = cli(capsys, "gguf-set", "--method", "yarn", "--factor", "2", "--beta-fast", "16", model)
    command = one_error_line(err).split("`")[1]
    assert shlex.split(command) == ["pyntk", "args", str(model), "--method", "yarn", "--factor", "2",
                                    "--beta-fast", "16"]
    proc = in_shell(command)
    assert proc.returncode == 0 and "--yarn-beta-fast 16" in proc.stdout, proc.stderr


# --- 3. --factor names no method --------------------------------------------------------------

@pytest.mark.parametrize("command", ["gguf-set", "args", "freqs"])
def test_factor_without_method_is_refused_with_the_measurements(model, capsys, command):
    before = ggufs.file_hash(model)
    argv = {"gguf-set": ["gguf-set", "--factor", "4", "--yes", model], "args": ["args", model, "--factor", "4"],
            "freqs": ["freqs", "--factor", "4"]}[command]
    rc, out, err = cli(capsys, *argv)
    line = one_error_line(err)
    assert rc == 1 and out == ""
    choices = ("linear", "yarn", "ntk-by-parts") + (("dynamic", "llama3") if command == "freqs" else ())
    assert "--factor does not say which method" in line and all(m in line for m in choices)
    for method, (excess, cost) in evidence.worst(choices).items():  # what pyntk measured, quoted
        assert f"{method} {excess:+.0%} perplexity at the target" in line and f"{cost:+.0%} inside" in line
    assert ggufs.file_hash(model) == before


# --- 4. absurd targets ------------------------------------------------------------------------

def test_targets_past_float32_positions_are_refused_even_with_force(model, capsys):
    before = ggufs.file_hash(model)
    for force in ([], ["--force"]):
        rc, _, err = cli(capsys, "gguf-set", "--ctx", "100000000", "--yes", *force, model)
        assert rc == 1 and "16777216 tokens (2^24)" in one_error_line(err)
    assert ggufs.file_hash(model) == before


def test_reach_beyond_64x_is_refused_unless_forced(model, capsys):
    # By hand for this model (d 32, base 1e4, L0 4096): the critical dimension is
    # 2*ceil(16*ln(4096/2pi)/ln(1e4)) = 2*ceil(11.26) = 24, so ntk alpha A reaches
    # (A^(32/30))^(24/32) = A^0.8 times L0: 64x at A = 64^1.25 = 181.02; 182^0.8 = 64.27,
    # 180^0.8 = 63.71.
    before = ggufs.file_hash(model)
    for argv, reach in ((["--alpha", "182"], "64.3x"), (["--method", "yarn", "--factor", "64.5"], "64.5x"),
                        (["--ctx", str(65 * 4096)], "65x")):
        rc, _, err = cli(capsys, "gguf-set", *argv, "--yes", model)
        line = one_error_line(err)
        assert rc == 1 and f"reaches {reach} the training context 4096" in line, line
        assert "64x" in line and "32x" in line and "--force" in line
        rc, _, err = cli(capsys, "args", model, *argv)
        assert rc == 1 and f"reaches {reach}" in one_error_line(err)
    assert ggufs.file_hash(model) == before
    for argv in (["--alpha", "180"], ["--method", "yarn", "--factor", "64"]):
        rc, _, err = cli(capsys, "gguf-set", *argv, "--yes", model)
        assert rc == 0 and "--force" not in err, err
    rc, _, err = cli(capsys, "gguf-set", "--alpha", "182", "--force", "--yes", model)
    assert rc == 0 and "note: --force: ntk alpha=182" in err
    assert read_view(model).base == f32(RopeScaling(method="ntk", alpha=182, base=1e4, dims=32).ntk_base)


# --- 5. info: context length and training context ----------------------------------------------

def test_info_names_the_new_context_and_the_training_context(model, capsys):
    def info_rows():
        rc, out, _ = cli(capsys, "info", model)
        return {line[:17].strip(): line[17:].strip() for line in out.splitlines() if line[:1] != " "}

    unedited = info_rows()
    assert unedited["training context"] == "4096" and "context length" not in unedited
    assert unedited["scaling type"].startswith("linear  (default)") and "no scaling" in unedited["scaling type"]
    apply(plan_set(model, alpha=4))  # 4096 * 4^0.8 = 12417 tokens, 12288 after llama.cpp's padding
    edited = info_rows()
    assert edited["context length"].split()[0] == "12288"
    assert edited["training context"].split()[0] == "4096"


# --- 6. bad numbers: one rule; a request that changes nothing writes nothing ---------------------

@pytest.mark.parametrize("value", ["0", "0.5", "-1", "nan", "inf", "-inf", "0.999"])
@pytest.mark.parametrize("option", ["--alpha", "--factor"])
@pytest.mark.parametrize("command", ["gguf-set", "args", "freqs"])
def test_bad_numbers_fail_alike(model, capsys, value, option, command):
    before = ggufs.file_hash(model)
    method = ["--method", "yarn"] if option == "--factor" else []
    argv = [command, *method, f"{option}={value}"] + ([model] if command != "freqs" else [])
    with pytest.raises(SystemExit) as exit:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert err.splitlines()[-1] == (f"pyntk {command}: error: argument {option}: must be a finite number >= 1 "
                                    f"(1 means no scaling), got '{value}'")
    assert ggufs.file_hash(model) == before


@pytest.mark.parametrize("argv", [["--alpha", "1"], ["--method", "none"], ["--method", "linear", "--factor", "1"]])
def test_a_request_that_changes_nothing_writes_nothing(model, capsys, argv):
    before, st = ggufs.file_hash(model), os.stat(model)
    rc, out, _ = cli(capsys, "gguf-set", *argv, "--yes", model)
    assert rc == 0 and "nothing to do: llama.cpp already runs this model that way" in out
    after = os.stat(model)
    assert ggufs.file_hash(model) == before
    assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


# --- 7. a rewrite keeps special mode bits and extended attributes --------------------------------

ATTRIBUTES = {"user.pyntk.test": b"kept", "user.origin": b"https://huggingface.co/some/model"}


def set_attributes(path):
    try:
        for name, value in ATTRIBUTES.items():
            os.setxattr(path, name, value)
    except (OSError, AttributeError) as e:
        pytest.skip(f"{path.parent} refuses user extended attributes: {e}")


def test_a_rewrite_keeps_special_bits_and_extended_attributes(model, capsys):
    set_attributes(model)
    mode = 0o644 | stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
    os.chmod(model, mode)
    if stat.S_IMODE(os.stat(model).st_mode) != mode:
        pytest.skip("this file system or user cannot set setuid/setgid/sticky bits")
    rc, out, err = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
    assert rc == 0 and "rewrite" in out and "could not keep" not in err
    assert stat.S_IMODE(os.stat(model).st_mode) == mode
    assert {name: os.getxattr(model, name) for name in ATTRIBUTES} == ATTRIBUTES


def test_a_rewrite_says_what_it_could_not_keep(model, capsys, monkeypatch):
    set_attributes(model)
    os.chmod(model, 0o644 | stat.S_ISUID)
    real_setxattr, real_fchmod = os.setxattr, os.fchmod

    def refused(target, name, value, *args, **kwargs):
        if name == "user.origin":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        return real_setxattr(target, name, value, *args, **kwargs)

    def no_setuid(fd, mode):  # as the kernel does for a user who does not own the file
        return real_fchmod(fd, mode & ~stat.S_ISUID)

    monkeypatch.setattr(os, "setxattr", refused)
    monkeypatch.setattr(os, "fchmod", no_setuid)
    rc, _, err = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
    assert rc == 0
    assert f"note: the rewritten file could not keep the original's extended attribute user.origin " \
           f"({os.strerror(errno.EPERM)})" in err
    assert "note: the rewritten file could not keep the original's setuid bit" in err
    assert os.getxattr(model, "user.pyntk.test") == b"kept"


# --- 8. hard links: only the path named is edited, first edit or later -------------------------

def test_an_edit_never_reaches_other_hard_links(model, capsys):
    other = model.parent / "other.gguf"
    os.link(model, other)
    pristine = ggufs.file_hash(other)
    rc, out, err = cli(capsys, "gguf-set", "--alpha", "2", "--yes", model)
    assert rc == 0 and "rewrite" in out and "2 hard links" in err
    assert ggufs.file_hash(other) == pristine
    for argv in (["gguf-set", "--alpha", "4"], ["gguf-reset"]):  # each would be in place
        os.unlink(other)
        os.link(model, other)  # the edited file has two names again
        edited = ggufs.file_hash(other)
        rc, out, err = cli(capsys, *argv, "--yes", model)
        assert rc == 0 and "rewrite (" in out and "has 2 hard links" in err, (out, err)
        assert ggufs.file_hash(other) == edited
    assert ggufs.file_hash(model) == pristine and os.stat(model).st_nlink == 1
    help_text = subprocess.run([sys.executable, "-m", "pyntk.cli", "gguf-set", "--help"], capture_output=True,
                               text=True).stdout
    assert "hard links: only the path named is edited" in help_text


# --- 9. info flags values another tool changed after pyntk's edit -----------------------------

CHANGES = {
    "llama.context_length": 5000,
    "llama.rope.freq_base": 123456.0,
    "llama.rope.scaling.type": "yarn",
    "llama.rope.scaling.factor": 2.0,
    "llama.rope.scaling.original_context_length": 2048,
    "llama.rope.scaling.attn_factor": 0.5,
}


def set_in_place(path, key, value):
    """Change one value the way gguf-py's gguf_set_metadata.py does: same type, same size, in place."""
    entry = GGUFFile(str(path)).entries[key]
    raw = encode_value(entry.type, value)
    assert len(raw) == entry.size
    ggufs.patch_bytes(path, entry.value_start, raw)


def test_every_key_pyntk_wrote_is_checked():
    assert set(CHANGES) == set(file_key_types("llama"))


@pytest.mark.parametrize("key", list(CHANGES))
def test_info_flags_a_value_changed_after_the_edit(model, capsys, key):
    original = ggufs.file_hash(model)
    apply(plan_set(model, alpha=4))

    def flagged():
        rc, out, _ = cli(capsys, "info", model)
        return [line for line in out.splitlines() if "another tool" in line]

    assert flagged() == []
    written = GGUFFile(str(model)).value(key)
    set_in_place(model, key, CHANGES[key])
    (line,) = flagged()
    assert line.split()[:3] == ["CHANGED", key, "="] and ", pyntk wrote " in line
    rc, out, _ = cli(capsys, "info", "--json", model)
    assert json.loads(out)["pyntk"]["changed_since"] == [{"key": key, "value": CHANGES[key], "written": written}]
    rc, _, _ = cli(capsys, "gguf-reset", "--yes", model)
    assert rc == 0 and ggufs.file_hash(model) == original


@pytest.mark.parametrize("argv", [
    ["--method", "yarn", "--factor", "2", "--attn-factor", "1.5"],
    ["--method", "yarn", "--factor", "2"],
    ["--method", "ntk-by-parts", "--factor", "2"],
    ["--base", "40000"],
    ["--alpha", "4"],
    ["--method", "linear", "--factor", "2"],
])
def test_info_flags_nothing_right_after_an_edit(model, capsys, argv):
    # pyntk.scaling did not record --attn-factor, and info rebuilt the scaling without it: it said
    # "CHANGED llama.rope.scaling.attn_factor = 1.5, pyntk wrote 1" right after pyntk's own edit.
    original = ggufs.file_hash(model)
    rc, out, err = cli(capsys, "gguf-set", "--yes", "--json", *argv, model)
    assert rc == 0, err
    recorded = json.loads(GGUFFile(str(model)).value(SCALING_KEY))
    assert recorded["scaling"] == json.loads(out)["target"]["scaling"]  # the whole scaling
    rc, out, _ = cli(capsys, "info", model)
    assert "CHANGED" not in out and "unreadable" not in out, out
    rc, out, _ = cli(capsys, "info", "--json", model)
    assert json.loads(out)["pyntk"]["changed_since"] == []
    assert cli(capsys, "gguf-reset", "--yes", model)[0] == 0 and ggufs.file_hash(model) == original


@pytest.mark.parametrize("argv", [["--alpha", "4"], ["--base", "40000"], ["--method", "yarn", "--factor", "2"],
                                  ["--method", "ntk-by-parts", "--factor", "2"]])
def test_a_file_edited_before_the_whole_scaling_was_recorded_still_reads(model, capsys, argv):
    # such a pyntk.scaling holds only method, alpha, factor, base, context, original_context
    original = ggufs.file_hash(model)
    assert cli(capsys, "gguf-set", "--yes", *argv, model)[0] == 0
    text = GGUFFile(str(model)).value(SCALING_KEY)
    old = {k: v for k, v in json.loads(text).items() if k != "scaling"}
    set_in_place(model, SCALING_KEY, json.dumps(old, separators=(",", ":")).ljust(len(text)))
    rc, out, _ = cli(capsys, "info", "--json", model)
    assert rc == 0 and json.loads(out)["pyntk"]["changed_since"] == []
    set_in_place(model, "llama.context_length", 5000)  # and a change by another tool still shows
    rc, out, _ = cli(capsys, "info", model)
    assert [line.split()[:2] for line in out.splitlines() if "CHANGED" in line] == [["CHANGED",
                                                                                     "llama.context_length"]]
    assert cli(capsys, "gguf-reset", "--yes", model)[0] == 0 and ggufs.file_hash(model) == original


# --- 10. leftover temporary files ---------------------------------------------------------------

HOLD = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_info_reports_leftover_temporary_files_with_the_command_that_removes_them(model, capsys):
    mine = model.parent / f".{model.name}{TEMP_MARK}999999999"
    theirs = model.parent / f".other model.gguf{TEMP_MARK}999999998"
    mine.write_bytes(b"x" * 3000)
    theirs.write_bytes(b"partial")
    rc, out, _ = cli(capsys, "info", model)
    remove = [line for line in out.splitlines() if line.lstrip().startswith("remove with")]
    assert str(theirs) in out and len(remove) == 1, out
    assert f"{mine}  (2.9 KiB, left by an interrupted edit)" in out
    remove = remove[0].split("remove with", 1)[1].split("  (")[0].strip()
    rc, out, _ = cli(capsys, "info", "--json", model)
    assert json.loads(out)["remove_stale_temporary_files"] == remove
    assert in_shell(remove).returncode == 0
    assert temps(model.parent) == []


def test_an_edit_removes_dead_temporary_files_of_any_model_in_its_folder(model, capsys):
    dead = model.parent / f".other.gguf{TEMP_MARK}999999999"
    alive = model.parent / f".other.gguf{TEMP_MARK}{os.getppid()}"
    # a dead process id but locked: an edit running in another pid namespace (a container)
    elsewhere = model.parent / f".{model.name}{TEMP_MARK}999999998"
    for path in (dead, alive, elsewhere):
        path.write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, elsewhere], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, out, _ = cli(capsys, "info", model)
        assert str(dead) in out and str(alive) not in out and str(elsewhere) not in out
        rc, _, err = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
        assert rc == 0 and f"removed {dead}" in err
        assert not dead.exists() and alive.exists() and elsewhere.exists()
    finally:
        holder.communicate("", timeout=60)
    rc, _, err = cli(capsys, "gguf-set", "--alpha", "2", "--yes", model)  # in place: still clears up
    assert rc == 0 and f"removed {elsewhere}" in err and not elsewhere.exists()


# --- 11. numbers past float64 or llama.cpp's float32: one line naming the option and the fix -----

@pytest.mark.parametrize("argv, words", [
    (["args", "MODEL", "--method", "yarn", "--factor", "2", "--attn-factor", "1e39"],
     "--attn-factor 1e+39 does not fit llama.cpp's float32 (at most 3.4e+38); choose a smaller --attn-factor"),
    (["gguf-set", "--dry-run", "MODEL", "--method", "yarn", "--factor", "2", "--attn-factor", "1e39"],
     "--attn-factor 1e+39 does not fit llama.cpp's float32 (at most 3.4e+38); choose a smaller --attn-factor"),
    (["verify", "MODEL", "--method", "yarn", "--factor", "2", "--attn-factor", "1e39"],
     "1e+39 does not fit llama.cpp's float32 (at most 3.4e+38); choose a smaller"),
    (["freqs", "--method", "ntk", "--alpha", "1e300"], "--alpha 1e+300 with base 10000 is too large for ntk"),
    (["freqs", "--base", "1e308", "--method", "ntk", "--alpha", "10"], "--alpha 10 with base 1e+308 is too large"),
    (["freqs", "--method", "dynamic", "--factor", "1e300", "--ctx", "4096"],
     "--factor 1e+300 with base 10000 is too large for dynamic"),
    (["gguf-set", "--yes", "MODEL", "--alpha", "1e300"], "--alpha 1e+300 with base 10000 is too large for ntk"),
])
def test_numbers_out_of_range_are_one_line_errors_naming_the_fix(model, capsys, argv, words):
    # OverflowError from struct.pack (attn_factor was the one float of the mapping left unchecked),
    # ZeroDivisionError from pyntk freqs' wavelengths: tracebacks
    before = ggufs.file_hash(model)
    rc, out, err = cli(capsys, *[model if a == "MODEL" else a for a in argv])
    line = one_error_line(err)
    assert rc == 1 and words in line and "choose a smaller" in line, line
    assert ggufs.file_hash(model) == before


@pytest.mark.llama
def test_ppl_refuses_an_alpha_past_float64(tmp_path, capsys):
    # OverflowError in the numpy reference's NTK base
    pytest.importorskip("llama_cpp")
    import tinymodels
    path = tinymodels.write_model(tmp_path / "tiny.gguf")
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    rc, _, err = cli(capsys, "ppl", path, "--text", text, "--method", "ntk:alpha=1e300")
    line = one_error_line(err)
    assert rc == 1 and "alpha 1e+300 with base 10000 is too large for ntk" in line and "choose a smaller" in line


@pytest.mark.parametrize("error", [ZeroDivisionError("float division by zero"), OverflowError("math range error"),
                                   struct.error("required argument is not a float")])
def test_an_arithmetic_error_left_anywhere_is_one_line(capsys, monkeypatch, error):
    # the safety net behind the checks: no command turns a number out of range into a traceback
    from pyntk.cli import freqs

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(freqs, "pair_table", broken)
    rc, out, err = cli(capsys, "freqs", "--alpha", "2")
    line = one_error_line(err)
    assert rc == 1 and out == "" and f"{type(error).__name__}: {error}" in line and "PYNTK_DEBUG=1" in line


# --- 12. each message names what the user typed ------------------------------------------------

def test_args_names_the_options_not_the_parameters(model, capsys):
    for argv, words in ((["--method", "yarn", "--factor", "2", "--beta-fast", "0.5"],
                         "--beta-fast must be greater than --beta-slow, got 0.5 <= 1"),
                        (["--method", "linear", "--factor", "2", "--beta-fast", "40"],
                         "--beta-fast does not apply to method 'linear'"),
                        (["--method", "ntk-by-parts", "--factor", "2", "--attn-factor", "2"],
                         "--attn-factor applies to --method yarn only")):
        rc, _, err = cli(capsys, "args", model, *argv)
        assert rc == 1 and words in one_error_line(err)


@pytest.mark.parametrize("command", [["args"], ["gguf-set", "--yes"]])
def test_dynamic_is_refused_as_something_llama_cpp_lacks(model, capsys, command):
    # args, the runtime command, was told llama.cpp cannot apply it "from a GGUF file"
    rc, _, err = cli(capsys, *command, model, "--method", "dynamic", "--factor", "2")
    line = one_error_line(err)
    assert rc == 1 and "cannot apply 'dynamic' through its file keys or its runtime flags" in line
    assert "GGUF file" not in line


def test_an_unwritable_output_directory_is_named_as_the_output(model, tmp_path, capsys):
    # it said the edited file "cannot be written beside the original", which -o does not do
    folder = tmp_path / "read-only"
    folder.mkdir()
    os.chmod(folder, 0o555)
    out = folder / "x.gguf"
    rc, _, err = cli(capsys, "gguf-set", "--alpha", "2", "--yes", "-o", out, model)
    line = one_error_line(err)
    assert rc == 1 and f"-o {out} cannot be written; choose an -o path in a writable directory" in line
    assert "beside the original" not in line and not out.exists()
