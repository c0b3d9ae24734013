"""The `pyntk` command line: --version, info, freqs, and one-line errors."""

import json
import math
import shutil
import subprocess
import sys

import pytest

import pyntk
from pyntk import RopeScaling, reference
from clirun import run



def assert_one_line_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def test_version_and_console_script():
    assert run("--version", check=0).stdout.strip() == f"pyntk {pyntk.__version__}"
    script = shutil.which("pyntk")
    assert script, "pip install should create a `pyntk` console script"
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"pyntk {pyntk.__version__}"


def test_help_teaches():
    out = run("--help", check=0).stdout
    for command in ("info", "freqs"):
        assert command in out
    freqs_help = run("freqs", "--help", check=0).stdout
    for method in pyntk.METHODS:
        assert method in freqs_help
    assert "example:" in freqs_help


@pytest.mark.model
def test_info_on_the_real_model(model_path):
    data = json.loads(run("info", model_path, "--json", check=0).stdout)
    assert data["arch"] == "llama"
    assert (data["context_length"], data["dims"], data["base"]) == (8192, 64, 100000.0)
    # No scaling keys in the file: llama.cpp's defaults, marked as such.
    assert (data["scaling_type"], data["factor"], data["original_context"]) == ("linear", 1.0, 8192)
    assert "llama.rope.scaling.type" in data["defaulted"]
    assert "llama.rope.freq_base" not in data["defaulted"]
    assert data["effective_scaling"] == {"method": "none", "summary": "none, base 100000"}
    text = run("info", model_path, check=0).stdout
    assert "training context   8192" in text
    assert "scaling type       linear  (default)" in text


@pytest.mark.model
@pytest.mark.llama
def test_info_agrees_with_llama_cpp(model_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    data = json.loads(run("info", model_path, "--json", check=0).stdout)
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=64, n_threads=2, verbose=False)
    try:
        assert llama_cpp.llama_model_n_ctx_train(llm.model) == data["context_length"]
        assert llama_cpp.llama_model_rope_freq_scale_train(llm.model) == 1.0 / data["factor"]
        assert float(llm.metadata["llama.rope.freq_base"]) == data["base"]
        assert int(llm.metadata["llama.rope.dimension_count"]) == data["dims"]
    finally:
        llm.close()


def test_freqs_table_matches_reference():
    out = run("freqs", "--method", "ntk", "--alpha", "4", "--dims", "128", "--base", "10000",
              "--ctx", "2048", "--json", check=0).stdout
    data = json.loads(out)
    s = RopeScaling(method="ntk", alpha=4, dims=128, base=10000)
    inv, _ = reference.inv_freq(s)
    plain, _ = reference.inv_freq(RopeScaling(dims=128, base=10000))
    assert len(data["pairs"]) == 64
    for row, new, old in zip(data["pairs"], inv, plain):
        assert row["wavelength_after"] == pytest.approx(2 * math.pi / new, rel=1e-12)
        assert row["wavelength_before"] == pytest.approx(2 * math.pi / old, rel=1e-12)
    statuses = [r["status"] for r in data["pairs"]]
    # NTK keeps the fastest pair, divides the slowest by exactly alpha, blends the rest.
    assert statuses[0] == "extrapolated" and statuses[-1] == "interpolated"
    assert set(statuses[1:-1]) == {"blended"}


def test_freqs_statuses_for_yarn_follow_the_ramp():
    data = json.loads(run("freqs", "--method", "yarn", "--factor", "4", "--dims", "128",
                          "--base", "10000", "--ctx", "4096", "--json", check=0).stdout)
    s = RopeScaling(method="yarn", factor=4, dims=128, base=10000, original_context=4096)
    gamma = reference.extrapolation_weight(s)
    expected = ["extrapolated" if g == 1 else "interpolated" if g == 0 else "blended" for g in gamma]
    assert [r["status"] for r in data["pairs"]] == expected
    assert set(expected) == {"extrapolated", "blended", "interpolated"}


def test_freqs_text_output():
    out = run("freqs", "--alpha", "4", "--dims", "16", "--ctx", "2048", check=0).stdout
    lines = out.splitlines()
    assert lines[0].startswith("# ntk alpha=4")
    assert lines[-1] == "# 1 extrapolated, 6 blended, 1 interpolated"
    assert len(lines) == 8 + 3


@pytest.mark.model
def test_freqs_takes_parameters_from_a_model(model_path):
    data = json.loads(run("freqs", "--model", model_path, "--method", "yarn", "--factor", "2",
                          "--json", check=0).stdout)
    assert (data["scaling"]["dims"], data["scaling"]["base"], data["context"]) == (64, 1e5, 8192)


@pytest.mark.parametrize("args, words", [
    (["freqs", "--alpha", "0.5"], ["--alpha", ">= 1"]),
    (["freqs", "--alpha", "x"], ["not a number"]),
    (["freqs", "--method", "linear", "--factor", "2", "--dims", "63"], ["dims", "even"]),
    (["freqs", "--method", "yarn", "--factor", "2"], ["--ctx"]),
    (["freqs", "--method", "linear"], ["--factor"]),
    (["freqs", "--method", "nope"], ["invalid choice"]),
    (["freqs", "--method", "linear", "--factor", "2", "--beta-fast", "8"], ["--beta-fast", "does not apply"]),
    (["info"], ["model"]),
])
def test_bad_arguments_give_one_line(args, words):
    assert_one_line_error(run(*args), *words)


def test_unreadable_files_give_one_line(tmp_path, model_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    assert_one_line_error(run("info", text), "not a GGUF file")
    assert_one_line_error(run("info", tmp_path / "missing.gguf"), "no such file")
    assert_one_line_error(run("info", tmp_path), "is a directory")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert_one_line_error(run("info", empty), "not a GGUF file")
    truncated = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as f:
        truncated.write_bytes(f.read(5000))
    assert_one_line_error(run("info", truncated), "truncated or corrupt")
    version = tmp_path / "v9.gguf"
    version.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(16))
    assert_one_line_error(run("info", version), "unsupported GGUF version 9")


def test_debug_variable_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyntk.cli", "info", str(tmp_path / "x.gguf")],
                          capture_output=True, text=True, env={**__import__("os").environ, "PYNTK_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
