"""`pyntk gguf-set` / `gguf-reset` / `args`: reversible, safe edits of GGUF files.

Small GGUFs from tests/ggufs.py cover the rewrite path, missing keys, other architectures and every
refusal (exit code, one-line message, file byte-identical). The real SmolLM2-135M model covers what
llama.cpp makes of the edited file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import struct
import sys

import ggufs
from llamalog import load_logged
import pytest
from gguf import GGUFValueType
from ggufs import ABSENT

from pyntk import writer
from pyntk.cli import main
from pyntk.edit import plan_reset, plan_set
from pyntk.llamacpp import file_key_types, read as read_view
from pyntk.record import LAYOUT_KEY, read_original, read_record
from pyntk.writer import apply
from pyntk.gguf_file import GGUFFile
from pyntk.scaling import RopeScaling

# --- helpers ---------------------------------------------------------------------------------

def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def values(path):
    """The five managed keys as (type name, value), None when absent."""
    g = GGUFFile(str(path))
    arch = g.value("general.architecture")
    return {k: (g.entries[k].type.name, g.value(k)) if k in g.entries else None for k in file_key_types(arch)}


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


@pytest.fixture
def model(tmp_path):
    """A small llama GGUF lacking every rope.scaling key, like most converted models."""
    return ggufs.write_model(tmp_path / "m.gguf", "llama", context_length=4096, n_embd=128, n_head=4)


def assert_refused(capsys, path, *argv, match, code=1):
    """Exit code, one line naming the problem, and the file byte-identical."""
    before = ggufs.file_hash(path) if os.path.isfile(path) else None
    rc, out, err = cli(capsys, *argv)
    assert rc == code, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyntk: error: "), err
    assert re.search(match, lines[0]), lines[0]
    if before is not None:
        assert ggufs.file_hash(path) == before
    return lines[0]


# --- the happy path on small files -------------------------------------------------------------

def test_first_edit_rewrites_then_edits_are_in_place_and_reset_is_exact(model, capsys):
    original = ggufs.file_hash(model)
    data = ggufs.data_hash(model)

    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
    assert rc == 0 and "rewrite" in out
    info = read_view(model)
    scaling = RopeScaling(method="ntk", alpha=4, base=10000.0, dims=32)
    assert info.base == f32(scaling.ntk_base)
    # Liu et al.'s criterion by hand: d/2 * ln(4096/2pi)/ln(1e4) = 11.26 turns -> 24 critical dims;
    # 4096 * (4^(32/30))^(24/32) = 4096 * 4^0.8 = 12416.7, rounded down to llama.cpp's 256 padding
    assert info.context_length == 12288
    assert (info.scaling_type, info.factor, info.original_context) == ("none", 1.0, 4096)
    assert ggufs.data_hash(model) == data
    size = os.path.getsize(model)

    for argv in (["--alpha", "2"], ["--method", "yarn", "--factor", "4"], ["--ctx", "10000"],
                 ["--method", "none"], ["--base", "50000"]):
        plan = plan_set(model, **_kwargs(argv))
        assert plan.mode == "in-place", (argv, plan.reason)
        rc, out, _ = cli(capsys, "gguf-set", "--yes", *argv, model)
        assert rc == 0 and "in place" in out
        assert os.path.getsize(model) == size and ggufs.data_hash(model) == data

    rc, out, _ = cli(capsys, "gguf-reset", "--yes", model)
    assert rc == 0
    assert ggufs.file_hash(model) == original


def _kwargs(argv):
    names = {"--alpha": ("alpha", float), "--factor": ("factor", float), "--ctx": ("ctx", int),
             "--base": ("base", float), "--method": ("method", str)}
    return {names[k][0]: names[k][1](v) for k, v in zip(argv[::2], argv[1::2])}


def test_yarn_keeps_the_old_context_as_original_context(model):
    apply(plan_set(model, method="yarn", factor=4))
    info = read_view(model)
    assert (info.scaling_type, info.factor) == ("yarn", 4.0)
    assert info.original_context == 4096 and info.context_length == 4 * 4096
    assert info.scaling() == RopeScaling(method="yarn", factor=4, original_context=4096, base=10000.0, dims=32)


def test_linear_needs_a_rewrite_for_the_longer_type_string(model):
    apply(plan_set(model, alpha=2))
    plan = plan_set(model, method="linear", factor=2)
    assert plan.mode == "rewrite" and "llama.rope.scaling.type" in plan.reason
    apply(plan)
    assert values(model)["llama.rope.scaling.type"] == ("STRING", "linear")
    assert plan_set(model, method="linear", factor=3).mode == "in-place"
    assert plan_set(model, alpha=3).mode == "rewrite"


def test_parameters_never_compound(model, tmp_path):
    direct = tmp_path / "direct.gguf"
    shutil.copy(model, direct)
    apply(plan_set(direct, alpha=4))
    for step in ({"alpha": 2}, {"method": "yarn", "factor": 8}, {"alpha": 4}):
        apply(plan_set(model, **step))
    assert values(model) == values(direct)
    # running the same command twice changes nothing
    before = ggufs.file_hash(model)
    plan = plan_set(model, alpha=4)
    assert plan.nothing_to_do and apply(plan).mode == "nothing"
    assert ggufs.file_hash(model) == before


def test_originals_are_written_once_and_never_overwritten(model):
    apply(plan_set(model, alpha=2))
    first = read_record(GGUFFile(str(model)))
    for step in ({"method": "yarn", "factor": 2}, {"method": "linear", "factor": 3}, {"alpha": 8}):
        apply(plan_set(model, **step))
        record = read_record(GGUFFile(str(model)))
        assert record.originals == first.originals and record.absent == first.absent
    assert {k: o.value for k, o in first.originals.items()} == {"llama.context_length": 4096,
                                                                 "llama.rope.freq_base": 10000.0}
    assert set(first.absent) == {"llama.rope.scaling.type", "llama.rope.scaling.factor",
                                 "llama.rope.scaling.attn_factor", "llama.rope.scaling.original_context_length"}
    assert read_original(model).context_length == 4096


@pytest.mark.parametrize("missing", ["llama.rope.freq_base", "llama.rope.dimension_count"])
def test_files_lacking_rope_keys(tmp_path, missing):
    path = ggufs.write_model(tmp_path / "m.gguf", **{missing: ABSENT})
    original = ggufs.file_hash(path)
    apply(plan_set(path, alpha=4))
    info = read_view(path)
    assert info.base == f32(10000.0 * 4 ** (16 / 14))  # base 10000 and dims 64/4 by default
    apply(plan_reset(path))
    assert ggufs.file_hash(path) == original


def test_original_types_and_bytes_are_restored(tmp_path):
    """Keys present with unusual types (f64 base, existing scaling keys) come back byte for byte."""
    path = ggufs.write_model(tmp_path / "m.gguf", "qwen2", context_length=32768, **{
        "qwen2.rope.freq_base": (1e6, GGUFValueType.FLOAT64),
        "qwen2.rope.scaling.type": "none",
        "qwen2.rope.scaling.factor": 1.0,
        "qwen2.rope.scaling.original_context_length": 32768,
    })
    original = ggufs.file_hash(path)
    apply(plan_set(path, method="yarn", factor=4))
    assert values(path)["qwen2.rope.freq_base"] == ("FLOAT32", 1e6)
    assert values(path)["qwen2.context_length"] == ("UINT32", 131072)
    assert plan_reset(path).mode == "rewrite"
    apply(plan_reset(path))
    assert ggufs.file_hash(path) == original


def test_a_model_that_declares_its_own_scaling_is_rescaled_from_its_training_context(tmp_path, capsys):
    path = ggufs.write_model(tmp_path / "m.gguf", "qwen2", context_length=131072, **{
        "qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
        "qwen2.rope.scaling.original_context_length": 32768})
    rc, out, err = cli(capsys, "gguf-set", "--alpha", "2", "--yes", path)
    assert rc == 0 and "declares yarn scaling x4" in err
    info = read_view(path)
    assert info.original_context == 32768 and info.scaling_type == "none"
    # 8 * ln(32768/2pi)/ln(1e6) = 4.96 -> 10 critical dims; 32768 * 2^(10/14) = 53761.5 -> 53760
    assert info.context_length == 53760


def test_gemma3_gets_a_note_that_only_global_layers_change(tmp_path, capsys):
    path = ggufs.write_model(tmp_path / "g.gguf", "gemma3", context_length=32768)
    rc, out, err = cli(capsys, "gguf-set", "--alpha", "2", "--yes", path)
    assert rc == 0
    assert ("llama.cpp runs them with base 10000 and scale 1, their own: no scaling reaches them" in err
            and "(1 of 1, window 512 tokens)" in err and "; only the 0 global layers change" in err)
    g = GGUFFile(str(path))
    assert g.value("gemma3.rope.freq_base_swa") == 10000.0  # untouched
    assert g.value("gemma3.rope.freq_base") > 1e6


def test_ntk_with_ctx_derives_alpha_and_is_written(model):
    plan = plan_set(model, method="ntk", ctx=12000)
    t = plan.target
    assert t.scaling.method == "ntk"
    # the alpha whose criterion gives 12000: (12000/4096)^(32/24) = base gain, alpha = gain^(30/32)
    assert t.scaling.alpha == pytest.approx((12000 / 4096) ** (32 / 24 * 30 / 32), rel=1e-12)
    assert t.supported_context >= 12000 - 1
    apply(plan)
    assert read_view(model).context_length == 12000


def test_factor_context_is_factor_times_original(model):
    apply(plan_set(model, method="linear", factor=2.5))
    assert read_view(model).context_length == 10240


def test_explicit_base(model):
    apply(plan_set(model, base=40000))
    info = read_view(model)
    assert info.base == 40000.0
    # base x4 -> 4096 * 4^(24/32) = 11585.2 -> 11520 (24 critical dims, as above)
    assert info.context_length == 11520


def test_output_file_leaves_the_original_untouched(model, tmp_path, capsys):
    before = ggufs.file_hash(model)
    out_path = tmp_path / "out" / "x.gguf"
    out_path.parent.mkdir()
    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "-o", out_path, "--yes", model)
    assert rc == 0 and ggufs.file_hash(model) == before
    assert read_view(out_path).scaling_type == "none"
    assert ggufs.data_hash(out_path) == ggufs.data_hash(model)
    assert_refused(capsys, model, "gguf-set", "--alpha", "2", "-o", out_path, "--yes", model,
                   match="already exists.*--force")
    rc, _, _ = cli(capsys, "gguf-set", "--alpha", "2", "-o", out_path, "--force", "--yes", model)
    assert rc == 0


def test_dry_run_and_json_write_nothing(model, capsys):
    before = ggufs.file_hash(model)
    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "--dry-run", model)
    new = plan_set(model, alpha=4).target.context
    assert rc == 0 and "would be rewrite" in out
    assert re.search(rf"llama.context_length +4096 -> {new}\n", out)
    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "--dry-run", "--json", model)
    data = json.loads(out)
    assert data["mode"] == "rewrite" and data["dry_run"] and not data["applied"]
    assert {c["key"] for c in data["changes"]} >= set(file_key_types("llama"))
    assert ggufs.file_hash(model) == before
    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "--json", model)
    data = json.loads(out)
    assert data["applied"] and data["result"]["mode"] == "rewrite"
    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "3", "--json", "--dry-run", model)
    assert json.loads(out)["mode"] == "in-place"


class _Tty:
    def __init__(self, answer):
        self.answer = answer

    def isatty(self):
        return True

    def readline(self):
        return self.answer


@pytest.mark.parametrize("answer, written", [("n\n", False), ("\n", False), ("y\n", True)])
def test_confirmation_prompt_on_a_terminal(model, capsys, monkeypatch, answer, written):
    before = ggufs.file_hash(model)
    monkeypatch.setattr(sys, "stdin", _Tty(answer))
    rc, out, err = cli(capsys, "gguf-set", "--alpha", "4", model)
    assert "[y/N]" in err
    assert (rc == 0) == written
    assert (ggufs.file_hash(model) != before) == written


def test_hard_links_get_a_note(model, capsys):
    os.link(model, model.parent / "other.gguf")
    rc, _, err = cli(capsys, "gguf-set", "--alpha", "2", "--yes", model)
    assert rc == 0 and "2 hard links" in err
    assert read_view(model.parent / "other.gguf").scaling_type == "linear"  # the other link: old content


def test_rewrite_preserves_permissions_and_follows_symlinks(model, tmp_path):
    os.chmod(model, 0o640)
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    apply(plan_set(link, alpha=4))
    assert link.is_symlink() and stat.S_IMODE(os.stat(model).st_mode) == 0o640
    assert read_view(model).scaling_type == "none"


def test_the_data_hash_would_catch_a_changed_tensor_byte(model, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(model, copy)
    assert ggufs.data_hash(copy) == ggufs.data_hash(model)
    g = GGUFFile(str(copy))
    last = g.file_size - 1
    with open(copy, "rb") as f:
        f.seek(last)
        byte = f.read(1)
    ggufs.patch_bytes(copy, last, bytes([byte[0] ^ 1]))
    assert ggufs.data_hash(copy) != ggufs.data_hash(model)


def test_big_vocabulary_rewrite_and_fast_reparse(tmp_path):
    path = ggufs.write_model(tmp_path / "big.gguf", vocab_size=20000, merges=20000, data_bytes=3 << 20)
    data = ggufs.data_hash(path)
    apply(plan_set(path, alpha=4))
    assert ggufs.data_hash(path) == data
    fast, full = GGUFFile(str(path), layout_key=LAYOUT_KEY), GGUFFile(str(path))
    assert fast.partial and not full.partial
    assert fast.tensors == full.tensors and fast.data_offset == full.data_offset
    assert read_view(fast) == read_view(full)
    assert fast.entries[LAYOUT_KEY].end < full.entries["tokenizer.ggml.tokens"].start  # pyntk keys early
    assert plan_set(path, alpha=2).mode == "in-place"


@pytest.mark.parametrize("how", ["EXDEV", "missing"])
def test_rewrite_without_copy_file_range(tmp_path, monkeypatch, how):
    path = ggufs.write_model(tmp_path / "m.gguf", data_bytes=(1 << 20) + 77)
    data = ggufs.data_hash(path)
    monkeypatch.setattr(writer, "COPY_CHUNK", 1 << 18)  # several chunks
    if how == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:
        def cross_device(*args):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", cross_device)
    seen = []
    apply(plan_set(path, alpha=4), progress=seen.append)
    assert ggufs.data_hash(path) == data and sum(seen) == GGUFFile(str(path)).file_size - \
        GGUFFile(str(path)).data_offset and len(seen) > 1


def test_stale_temporary_files_are_removed_live_ones_kept(model, capsys):
    dead = model.parent / f".{model.name}.pyntk-tmp-999999999"
    alive = model.parent / f".{model.name}.pyntk-tmp-{os.getppid()}"
    dead.write_bytes(b"partial")
    alive.write_bytes(b"someone else")
    rc, out, err = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
    assert rc == 0 and f"removed {dead}" in err
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize("where", ["verify", "progress"])
def test_failed_rewrite_leaves_original_and_no_temporary_file(model, monkeypatch, where):
    before = ggufs.file_hash(model)
    if where == "verify":
        def broken(*a, **k):
            raise writer.PyntkError("simulated verification failure")
        monkeypatch.setattr(writer, "_verify", broken)
        with pytest.raises(writer.PyntkError):
            apply(plan_set(model, alpha=4))
    else:
        def interrupt(n):
            raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            apply(plan_set(model, alpha=4), progress=interrupt)
    assert ggufs.file_hash(model) == before
    assert [p.name for p in model.parent.iterdir()] == [model.name]


def test_a_file_changed_after_planning_is_not_edited(model):
    apply(plan_set(model, alpha=2))
    stale = plan_set(model, alpha=4)
    apply(plan_set(model, alpha=3))
    before = ggufs.file_hash(model)
    with pytest.raises(writer.PyntkError, match="changed while"):
        apply(stale)
    assert ggufs.file_hash(model) == before


def test_a_file_changed_before_a_planned_rewrite_is_not_rewritten(model):
    stale = plan_set(model, alpha=4)
    assert stale.mode == "rewrite"
    apply(plan_set(model, alpha=3))
    before = ggufs.file_hash(model)
    with pytest.raises(writer.PyntkError, match="changed while"):
        apply(stale)
    assert ggufs.file_hash(model) == before


def test_info_shows_the_record(model, capsys):
    apply(plan_set(model, alpha=4))
    rc, out, _ = cli(capsys, "info", model)
    assert rc == 0 and "pyntk edit" in out and "ntk alpha=4" in out
    assert "llama.context_length = 4096" in out and "llama.rope.scaling.type absent" in out
    rc, out, _ = cli(capsys, "info", "--json", model)
    assert json.loads(out)["pyntk"]["originals"]["llama.context_length"] == 4096


# --- refusals: exit code, one line, file byte-identical ------------------------------------

def test_refuses_missing_file(tmp_path, capsys):
    assert_refused(capsys, tmp_path / "nope.gguf", "gguf-set", "--alpha", "4", tmp_path / "nope.gguf",
                   match="no such file")


def test_refuses_not_a_gguf(tmp_path, capsys):
    path = tmp_path / "x.gguf"
    path.write_text("hello, not a model\n")
    assert_refused(capsys, path, "gguf-set", "--alpha", "4", path, match="not a GGUF file")


@pytest.mark.parametrize("cut", ["metadata", "data"])
def test_refuses_truncated(model, capsys, cut):
    g = GGUFFile(str(model))
    ggufs.truncate(model, 700 if cut == "metadata" else g.file_size - 100)
    assert_refused(capsys, model, "gguf-set", "--alpha", "4", model, match="truncated or corrupt")


def test_refuses_truncated_even_with_a_layout_hint(model, capsys):
    apply(plan_set(model, alpha=2))
    ggufs.truncate(model, -100)
    assert_refused(capsys, model, "gguf-set", "--alpha", "4", model, match="truncated or corrupt")


def test_refuses_corrupt(model, capsys):
    g = GGUFFile(str(model))
    entry = g.entries["llama.context_length"]
    ggufs.patch_bytes(model, entry.value_start - 4, struct.pack("<I", 99))  # unknown value type
    assert_refused(capsys, model, "gguf-set", "--alpha", "4", model, match="unknown value type 99")


@pytest.mark.parametrize("version", [1, 4, 0x03000000])
def test_refuses_unsupported_version(model, capsys, version):
    ggufs.patch_bytes(model, 4, struct.pack("<I", version))
    assert_refused(capsys, model, "gguf-set", "--alpha", "4", model, match="unsupported .*GGUF version")


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_refuses_architectures_without_rope(tmp_path, capsys, arch):
    path = ggufs.write_model(tmp_path / "m.gguf", arch)
    assert_refused(capsys, path, "gguf-set", "--alpha", "4", path, match="does not use RoPE")


def test_refuses_finetuned_unless_forced(tmp_path, capsys):
    path = ggufs.write_model(tmp_path / "m.gguf", finetuned=True)
    assert_refused(capsys, path, "gguf-set", "--alpha", "4", path, match="finetuned.*--force")
    rc, _, err = cli(capsys, "gguf-set", "--alpha", "4", "--force", "--yes", path)
    assert rc == 0 and "--force" in err
    assert read_view(path).finetuned  # the flag itself is left alone


@pytest.mark.parametrize("argv, match", [
    (["--ctx", "4096"], "not above the model's training context 4096"),
    (["--ctx", "100"], "not above"),
    (["--method", "yarn", "--ctx", "2048"], "not above"),
    (["--base", "5000"], "below the model's base"),
    (["--method", "dynamic", "--factor", "2"], "cannot apply 'dynamic'"),
    (["--method", "linear", "--alpha", "2"], "--alpha does not apply to --method linear"),
    (["--alpha", "2", "--base", "20000"], "not both"),
    (["--method", "yarn", "--factor", "2", "--beta-fast", "16"], "--beta-fast cannot be stored"),
    ([], "nothing to do"),
    (["--method", "yarn"], "needs --factor S or --ctx N"),
    (["--method", "ntk"], "needs --alpha A, --base B or --ctx N"),
    (["--method", "none", "--ctx", "9000"], "--ctx does not apply to --method none"),
])
def test_refuses_bad_parameters(model, capsys, argv, match):
    assert_refused(capsys, model, "gguf-set", *argv, "--yes", model, match=match)


@pytest.mark.parametrize("first", [False, True])
def test_refuses_read_only_file(model, capsys, first):
    if first:
        apply(plan_set(model, alpha=2))  # the next edit is in place
    os.chmod(model, 0o444)
    assert_refused(capsys, model, "gguf-set", "--alpha", "4", "--yes", model, match="read-only.*chmod")


def test_refuses_longrope(tmp_path, capsys):
    path = ggufs.write_model(tmp_path / "m.gguf", **{"llama.rope.scaling.type": "longrope"})
    assert_refused(capsys, path, "gguf-set", "--alpha", "4", path, match="LongRoPE")


def test_gguf_v2_stays_v2(model):
    ggufs.patch_bytes(model, 4, struct.pack("<I", 2))
    original = ggufs.file_hash(model)
    apply(plan_set(model, alpha=4))
    assert GGUFFile(str(model)).version == 2
    apply(plan_reset(model))
    assert ggufs.file_hash(model) == original


def test_reset_to_an_output_file(model, tmp_path, capsys):
    original = ggufs.file_hash(model)
    apply(plan_set(model, alpha=4))
    edited = ggufs.file_hash(model)
    rc, _, _ = cli(capsys, "gguf-reset", "-o", tmp_path / "orig.gguf", "--yes", model)
    assert rc == 0 and ggufs.file_hash(tmp_path / "orig.gguf") == original
    assert ggufs.file_hash(model) == edited


def test_refuses_read_only_directory(model, capsys):
    os.chmod(model.parent, 0o555)
    try:
        assert_refused(capsys, model, "gguf-set", "--alpha", "4", "--yes", model,
                       match="directory is read-only.*-o OUT.gguf")
    finally:
        os.chmod(model.parent, 0o755)


def test_read_only_directory_still_allows_in_place_edits(model, capsys):
    apply(plan_set(model, alpha=2))
    os.chmod(model.parent, 0o555)
    try:
        rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
        assert rc == 0 and "in-place" in out
    finally:
        os.chmod(model.parent, 0o755)


def test_refuses_when_disk_is_too_full(model, capsys, monkeypatch):
    monkeypatch.setattr(writer, "_free_bytes", lambda directory: 1000)
    assert_refused(capsys, model, "gguf-set", "--alpha", "4", "--yes", model, match="not enough free disk")
    assert [p.name for p in model.parent.iterdir()] == [model.name]


def test_refuses_while_another_edit_holds_the_lock(model, capsys):
    fcntl = pytest.importorskip("fcntl")
    fd = os.open(model, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_refused(capsys, model, "gguf-set", "--alpha", "4", "--yes", model,
                       match="another pyntk process is editing")
    finally:
        os.close(fd)
    rc, _, _ = cli(capsys, "gguf-set", "--alpha", "4", "--yes", model)
    assert rc == 0


def test_refuses_a_record_from_a_newer_pyntk(model, capsys):
    apply(plan_set(model, alpha=2))
    entry = GGUFFile(str(model)).entries["pyntk.format"]
    ggufs.patch_bytes(model, entry.value_start, struct.pack("<I", 99))
    assert_refused(capsys, model, "gguf-set", "--alpha", "4", model, match="newer pyntk.*upgrade")
    assert_refused(capsys, model, "gguf-reset", model, match="newer pyntk")


def test_reset_without_a_record_does_nothing(model, capsys):
    before = ggufs.file_hash(model)
    rc, out, err = cli(capsys, "gguf-reset", "--yes", model)
    assert rc == 0 and "nothing to do" in out and "no pyntk record" in err
    assert ggufs.file_hash(model) == before


# --- pyntk args ----------------------------------------------------------------------------

def test_args_prints_runtime_settings_and_leaves_the_file(model, capsys):
    before = ggufs.file_hash(model)
    rc, out, _ = cli(capsys, "args", model, "--alpha", "4")
    t = plan_set(model, alpha=4).target
    assert rc == 0 and ggufs.file_hash(model) == before
    assert f"-c {t.context} --rope-scaling none --rope-freq-base " in out
    assert f"--override-kv llama.context_length=int:{t.context}" in out
    assert "--override-kv llama.rope.scaling.type=str:none" in out
    rc, out, _ = cli(capsys, "args", model, "--method", "yarn", "--factor", "4", "--beta-fast", "16", "--json")
    kw = json.loads(out)["llama_cpp_python"]
    assert kw == {"n_ctx": 16384, "rope_scaling_type": 2, "rope_freq_base": 10000.0, "rope_freq_scale": 0.25,
                  "yarn_ext_factor": 1.0, "yarn_orig_ctx": 4096, "yarn_beta_fast": 16.0, "yarn_beta_slow": 1.0,
                  "kv_overrides": {"llama.context_length": 16384, "llama.rope.scaling.attn_factor": 1.0}}


def test_args_sets_yarn_attn_factor_through_the_file_key(model, capsys):
    # llama.cpp overwrites its yarn_attn_factor parameter; only the key reaches the kernel.
    rc, out, _ = cli(capsys, "args", model, "--method", "yarn", "--factor", "4", "--attn-factor", "0.9",
                     "--json")
    settings = json.loads(out)
    assert rc == 0 and "yarn_attn_factor" not in settings["llama_cpp_python"]
    assert settings["llama_cpp_python"]["kv_overrides"]["llama.rope.scaling.attn_factor"] == f32(0.9)
    assert "llama.rope.scaling.attn_factor=float:0.9" in settings["llama_cpp_flags"]
    assert "--yarn-attn-factor" not in settings["llama_cpp_flags"]


def test_args_uses_the_original_values_of_an_edited_file(model, capsys):
    rc, fresh, _ = cli(capsys, "args", model, "--alpha", "4", "--json")
    apply(plan_set(model, method="yarn", factor=8))
    rc, edited, _ = cli(capsys, "args", model, "--alpha", "4", "--json")
    assert json.loads(fresh)["llama_cpp_python"] == json.loads(edited)["llama_cpp_python"]


# --- the real model in llama.cpp -------------------------------------------------------------

@pytest.fixture
def edited_model(model_path, tmp_path):
    path = tmp_path / model_path.name
    shutil.copy(model_path, path)
    return path


@pytest.mark.model
@pytest.mark.llama
def test_llama_cpp_loads_the_edited_model_and_the_reset_one(edited_model, capsys):
    llama_cpp = pytest.importorskip("llama_cpp")
    data = ggufs.data_hash(edited_model)
    original = ggufs.file_hash(edited_model)

    rc, out, _ = cli(capsys, "gguf-set", "--method", "yarn", "--factor", "2", "--yes", edited_model)
    assert rc == 0 and ggufs.data_hash(edited_model) == data
    llm, log = load_logged(llama_cpp, edited_model, 512)
    assert llama_cpp.llama_model_n_ctx_train(llm.model) == 16384
    assert llama_cpp.llama_model_rope_freq_scale_train(llm.model) == pytest.approx(0.5)
    assert log.value("rope scaling") == "yarn"
    assert log.value("n_ctx_orig_yarn") == "8192"
    assert float(llm.metadata["llama.rope.freq_base"]) == 100000.0
    del llm

    # static NTK: generate at the new, longer context without any runtime flag
    rc, out, _ = cli(capsys, "gguf-set", "--alpha", "4", "--yes", edited_model)
    assert rc == 0 and "in place" in out
    info = read_view(edited_model)
    llm, log = load_logged(llama_cpp, edited_model, 0)  # n_ctx 0: the model's (new) training context
    assert llama_cpp.llama_n_ctx(llm.ctx) == info.context_length > 8192
    assert llama_cpp.llama_model_n_ctx_train(llm.model) == info.context_length
    assert float(log.value("freq_base_train")) == pytest.approx(info.base, rel=1e-6)
    assert log.value("rope scaling") == "none"
    assert "exceeds the training context" not in "".join(log.lines)
    text = llm("The capital of France is", max_tokens=4, temperature=0.0)["choices"][0]["text"]
    assert text.strip()
    del llm

    rc, out, _ = cli(capsys, "gguf-reset", "--yes", edited_model)
    assert rc == 0 and ggufs.file_hash(edited_model) == original
    llm, log = load_logged(llama_cpp, edited_model, 512)
    assert llama_cpp.llama_model_n_ctx_train(llm.model) == 8192
    assert float(log.value("freq_base_train")) == 100000.0
    assert log.value("rope scaling") == "linear"
    del llm


@pytest.mark.model
@pytest.mark.llama
def test_args_kwargs_give_the_same_logits_as_the_edited_file(edited_model, model_path, capsys):
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    rc, out, _ = cli(capsys, "args", model_path, "--alpha", "4", "--json")
    kwargs = json.loads(out)["llama_cpp_python"]
    kwargs["n_ctx"] = 64
    apply(plan_set(edited_model, alpha=4))
    tokens = list(range(1000, 1016))

    def logits(path, **kw):
        llm, _ = load_logged(llama_cpp, path, kw.pop("n_ctx", 64), logits_all=True, **kw)
        llm.eval(tokens)
        out = np.array(llm.scores[:len(tokens)])
        return out, llama_cpp.llama_model_n_ctx_train(llm.model)

    file_logits, file_train = logits(edited_model)
    flag_logits, flag_train = logits(model_path, **kwargs)
    plain_logits, _ = logits(model_path)
    assert file_train == flag_train == read_view(edited_model).context_length
    np.testing.assert_array_equal(file_logits, flag_logits)
    assert not np.array_equal(file_logits, plain_logits)  # the comparison can fail


@pytest.mark.model
def test_real_model_set_reset_round_trip_and_in_place_speed(edited_model):
    original = ggufs.file_hash(edited_model)
    data = ggufs.data_hash(edited_model)
    apply(plan_set(edited_model, alpha=4))
    result = apply(plan_set(edited_model, method="yarn", factor=2))
    assert result.mode == "in-place" and result.bytes_written < 4096
    assert ggufs.data_hash(edited_model) == data
    apply(plan_reset(edited_model))
    assert ggufs.file_hash(edited_model) == original
