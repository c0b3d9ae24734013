"""The real Gemma 3 270M file: sliding-window layers keep their own rope base through every command.

Expected values come from the file's published configuration (18 layers, every sixth global,
window 512, base 1e6 global and 10000 on the window layers) and from llama.cpp's own load log.
"""

import json
import shutil

import ggufs
import pytest
from llamalog import load_logged

from pyntk.cli import main

pytestmark = pytest.mark.gemma
GLOBAL_LAYERS = [5, 11, 17]  # il % 6 == 5 (llama-hparams.cpp set_swa_pattern with period 6)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def gemma(gemma_path, tmp_path):
    path = tmp_path / gemma_path.name
    shutil.copy(gemma_path, path)
    return path


def test_info_shows_the_window_layers_and_their_base(gemma_path, capsys):
    rc, out, _ = cli(capsys, "info", "--json", gemma_path)
    data = json.loads(out)
    assert rc == 0 and data["arch"] == "gemma3" and data["mode"] == "neox"
    assert data["base"] == 1e6 and data["base_swa"] == 10000.0 and data["sliding_window"] == 512
    assert "gemma3.rope.freq_base_swa" in data["defaulted"]  # llama.cpp's default, not a key
    assert sorted(set(range(18)) - set(data["window_layers"])) == GLOBAL_LAYERS
    rc, out, _ = cli(capsys, "info", gemma_path)
    assert "window layers' rope  base 10000, scale 1  (default)  (their own: no scaling reaches them" in out


@pytest.mark.llama
def test_gguf_set_changes_only_the_global_base_and_reset_restores_every_byte(gemma, capsys):
    llama_cpp = pytest.importorskip("llama_cpp")
    before = ggufs.file_hash(gemma)
    rc, out, err = cli(capsys, "gguf-set", "--alpha", "4", "--yes", gemma)
    assert rc == 0
    assert ("(15 of 18, window 512 tokens): llama.cpp runs them with base 10000 and scale 1, their own" in err
            and "; only the 3 global layers change" in err)
    new_base = 1e6 * 4 ** (256 / 254)  # head size 256
    values = ggufs.kv_of(gemma)
    assert values["gemma3.rope.freq_base"][0] == pytest.approx(new_base, rel=1e-6)
    assert "gemma3.rope.freq_base_swa" not in values
    llm, log = load_logged(llama_cpp, gemma, 512)
    del llm
    assert float(log.value("freq_base_train")) == pytest.approx(new_base, rel=1e-6)
    assert float(log.value("freq_base_swa")) == 10000.0
    rc, _, _ = cli(capsys, "gguf-reset", "--yes", gemma)
    assert rc == 0 and ggufs.file_hash(gemma) == before


def test_ntk_by_parts_is_refused_for_window_layers_it_would_damage(gemma, capsys):
    before = ggufs.file_hash(gemma)
    rc, _, err = cli(capsys, "gguf-set", "--method", "ntk-by-parts", "--factor", "2", "--yes", gemma)
    assert rc != 0 and "sliding-window layers would be damaged" in err and "--method yarn" in err
    assert ggufs.file_hash(gemma) == before


def test_plan_counts_only_the_global_layers(gemma_path, capsys):
    rc, out, _ = cli(capsys, "plan", gemma_path, "--ctx", "65536", "--json")
    rows = json.loads(out)["pairs"]
    assert rc == 0 and len(rows) == 128 and all(r["layers"] == GLOBAL_LAYERS for r in rows)
    rc, out, _ = cli(capsys, "plan", gemma_path, "--ctx", "65536")
    assert "15 of 18 layers are sliding-window layers (window 512 tokens)" in out
    assert "for the 3 global layers (5, 11, 17)" in out
