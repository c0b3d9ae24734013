"""Streamed perplexity: equal to a straightforward computation from llama-cpp-python's full
logits, bounded in memory, and the `pyntk ppl` command."""

import json
import math
import tracemalloc

import numpy as np
import pytest

from pyntk import PyntkError, RopeScaling, plan
from pyntk.llama import Model
from pyntk.perplexity import (Candidate, Result, evaluate, first_scored, format_table,
                              plan_windows, read_text)
from clirun import THREADS, run

# Plain English prose for the tests (written for pyntk; about 600 tokens).
TEXT = """\
The lighthouse keeper kept a notebook on the table beside the lamp. Every evening he wrote down
the direction of the wind, the colour of the sea and the names of the ships that passed before
dark. Most of the entries were short, because most days were alike: a grey morning, a little
rain after noon, a fishing boat or two heading home with the tide. Now and then a longer entry
broke the pattern. He described a storm that lasted three days and tore the roof from the boat
shed, or a summer evening so still that he could hear the bells of the church across the bay.

His daughter visited him once a month. She brought bread, coffee, newspapers and the letters
that had gathered at the post office in the village. She liked to read the old notebooks while
he cooked, and she often asked him why he kept writing when nobody would ever read the pages.
He told her that the sea changed slowly, and that a man who did not write things down would
believe it had always been the same. The notebooks proved otherwise. The winters had grown
milder, the fishing boats fewer, and the ships larger and faster than they were when he began.

When the light was finally automated, the keeper moved to a small house at the edge of the
village. He took the notebooks with him and stacked them on shelves in the kitchen. For a while
he kept writing, out of habit, about the weather he could see from his window. Later he began to
copy the old entries into a single long account, adding what he remembered of the people and
the boats. His daughter typed the pages in the evenings, and the account grew into a book about
forty years of one stretch of coast: the storms, the wrecks, the rescues and the quiet days.

The book was never famous, but the harbour museum keeps a copy beside the old lamp, and visitors
who open it tend to read further than they meant to. They find the names of their grandparents'
boats, the winter the harbour froze, and the night the keeper rowed out alone to a yacht that
had lost its mast. They also find many pages where nothing happened at all, and those pages,
the keeper's daughter says, were the ones he valued most, because they showed what ordinary
life on the coast had been like before anyone thought it worth recording.

Years later a student from the university came to study the notebooks. She counted the storms,
measured the dates of the first frost and compared the keeper's notes with the records of the
weather service. The two agreed far better than she had expected.
"""





@pytest.fixture(scope="module")
def model(model_path):
    return Model(model_path, threads=THREADS)


@pytest.fixture(scope="module")
def tokens(model):
    t = model.tokenize(TEXT)
    assert len(t) >= 512
    return t


def straightforward_logprobs(model_path, windows, **llama_kwargs):
    """log p(token i | tokens < i), i >= 1, of each window from llama-cpp-python's full logits
    (logits_all=True), log-softmax in float64."""
    import llama_cpp

    n = len(windows[0])
    llm = llama_cpp.Llama(str(model_path), n_ctx=n, logits_all=True, verbose=False, n_threads=THREADS,
                          n_threads_batch=THREADS, **llama_kwargs)
    out = []
    for window in windows:
        llm.reset()
        llm.eval(window.tolist())
        logits = llm.scores[:n].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        out.append(logp[np.arange(n - 1), window[1:]])
    llm.close()
    return out


@pytest.mark.model
@pytest.mark.llama
def test_equals_straightforward_computation_from_full_logits(model, model_path, tokens):
    scalings = {
        "none": RopeScaling(method="none", base=1e5, dims=64),
        "ntk": RopeScaling(method="ntk", alpha=4, base=1e5, dims=64),
    }
    windows = [tokens[:64].copy(), tokens[64:128].copy()]
    if model.bos() is not None:  # as llama-perplexity does (SmolLM2 adds no BOS)
        for w in windows:
            w[0] = model.bos()
    references = {}
    for label, s in scalings.items():
        kwargs = {"rope_freq_base": s.ntk_base} if s.method == "ntk" else {}
        references[label] = straightforward_logprobs(model_path, windows, **kwargs)
        for score in ("half", "all"):
            first = first_scored(64, score)
            expected = math.exp(-np.mean([lp[first - 1:] for lp in references[label]]))
            (r,) = evaluate(model, tokens, [64], [Candidate(label, s)], score=score, span=128)
            assert r.windows == 2 and r.tokens == 2 * (64 - first)
            assert r.ppl == pytest.approx(expected, rel=1e-6), (label, score)
    # the scaling did act
    assert not np.allclose(references["none"][0], references["ntk"][0], atol=1e-3)


@pytest.mark.model
@pytest.mark.llama
def test_memory_is_streamed(model, rng):
    # Scoring every token of a 512-token window in batches of 64: the full logits would be
    # 511 x 49152 float32 (100 MB); only one batch's worth (13 MB) is ever held.
    tokens = rng.integers(0, model.n_vocab, size=512).astype(np.int32)
    full = 511 * model.n_vocab * 4
    with model.context(512, RopeScaling(method="none", base=1e5, dims=64), n_batch=64) as ctx:
        tracemalloc.start()
        try:
            ctx.logprobs(tokens, 1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 0.2 * full, f"peak {peak / 1e6:.0f} MB"


@pytest.mark.model
@pytest.mark.llama
def test_dynamic_reuses_unscaled_within_training_context_and_measures_plan_candidates(model, tokens):
    # Dynamic NTK within the training context is unscaled RoPE: measured once, reported twice.
    cands = [Candidate("none", plan.scaling_for("none", 32768, **plan_args(model))),
             Candidate("dynamic", plan.scaling_for("dynamic", 32768, **plan_args(model)))]
    calls = []
    none, dyn = evaluate(model, tokens, [128], cands, progress=calls.append)
    assert dyn.ppl == none.ppl and dyn.label == "dynamic" and dyn.scaling.method == "dynamic"
    assert calls == [128, 128]
    # `pyntk plan --measure`'s starting points, on a pretend 64-token training context
    rec = plan.recommend(128, dims=64, base=1e5, training_context=64)
    candidates = [Candidate(s.method, s) for s in (rec.scaling, rec.runner_up.scaling)]
    assert [c.label for c in candidates] == ["yarn", "ntk"]
    results = evaluate(model, tokens, [128], candidates)
    assert all(math.isfinite(r.ppl) and r.ppl > 1 for r in results)
    assert len({round(r.ppl, 6) for r in results}) == len(results)  # they really differ


def plan_args(model):
    info = model.info
    return dict(dims=info.dims, base=info.base, training_context=info.original_context)


def test_windows_and_errors():
    assert plan_windows(1000, [128, 256, 512]) == (512, {128: 4, 256: 2, 512: 1})
    assert plan_windows(1000, [300], span=900) == (900, {300: 3})
    with pytest.raises(PyntkError, match="reads 512"):
        plan_windows(500, [256, 512])
    with pytest.raises(ValueError, match="at least 4"):
        plan_windows(500, [2])
    assert first_scored(512, "half") == 256 and first_scored(512, "all") == 1
    with pytest.raises(ValueError, match="score"):
        first_scored(512, "most")


def test_read_text_wants_utf8(tmp_path):
    # `pyntk ppl --text` and `pyntk plan --measure --text` read their text through this one function
    path = tmp_path / "t.txt"
    path.write_bytes("caf\u00e9".encode("utf-8"))
    assert read_text(str(path)) == "caf\u00e9"
    path.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(PyntkError, match="not UTF-8 text; convert it"):
        read_text(str(path))
    with pytest.raises(PyntkError, match=f"--text {tmp_path}: is a folder; give a text file"):
        read_text(str(tmp_path))
    with pytest.raises(PyntkError, match="--text .*missing.txt: no such file or directory; check the path"):
        read_text(str(tmp_path / "missing.txt"))


def test_check_plot_refuses_a_folder(tmp_path):
    from pyntk.cli._common import check_plot
    with pytest.raises(PyntkError, match="is a folder; give a file name such as"):
        check_plot(str(tmp_path))


def test_table_lists_methods_by_length():
    s = RopeScaling(method="none", base=1e5, dims=64)
    n = RopeScaling(method="ntk", alpha=2, base=1e5, dims=64)
    results = [Result("none", s, 256, 10.5, 2.35, 128, 2, 1.0), Result("ntk", n, 256, 11.25, 2.42, 128, 2, 1.0),
               Result("none", s, 512, 9.0, 2.2, 256, 1, 1.0), Result("ntk", n, 512, 1234.5, 7.1, 256, 1, 1.0)]
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["method", "parameters", "256", "512"]
    assert lines[1].split() == ["none", "none", "10.500", "9.000"]
    assert lines[2].split()[0] == "ntk" and lines[2].split()[-2:] == ["11.250", "1234"]


@pytest.mark.model
@pytest.mark.llama
def test_ppl_command(model_path, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    png = tmp_path / "ppl.png"
    proc = run("ppl", model_path, "--text", text, "--ctx", "64,128", "--method", "none,ntk:alpha=4,dynamic",
               "--threads", THREADS, "--json", "--plot", png, check=0)
    data = json.loads(proc.stdout)
    assert proc.stderr == ""  # --json: no progress bar
    assert (data["training_context"], data["target"], data["score"]) == (8192, 128, "half")
    assert data["windows"] == {"64": 2, "128": 1}
    got = {(r["label"], r["ctx"]): r for r in data["results"]}
    assert set(got) == {(m, n) for m in ("none", "ntk:alpha=4", "dynamic") for n in (64, 128)}
    assert got[("ntk:alpha=4", 128)]["scaling"]["alpha"] == 4
    assert got[("dynamic", 128)]["ppl"] == got[("none", 128)]["ppl"]  # 128 tokens: within L0
    assert all(r["tokens_scored"] == 64 for r in data["results"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.model
def test_ppl_errors_are_one_line(model_path, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    for args, words in [
        (("--ctx", "100000"), ["reads 100000", "give a longer text"]),
        (("--ctx", "64", "--method", "ntk:beta=3"), ["ntk:beta=3", "PARAM=VALUE"]),
        (("--ctx", "64", "--method", "linear:alpha=3"), ["does not apply"]),
        (("--ctx", "64", "--method", "warp"), ["unknown method"]),
        # refused before anything is measured, not after the first methods
        (("--ctx", "64", "--method", "none,llama3"), ["--method 'llama3'", "no runtime setting"]),
        (("--ctx", "64", "--plot", tmp_path / "missing" / "p.png"), ["no folder", "create it"]),
    ]:
        proc = run("ppl", model_path, "--text", text, "--threads", THREADS, *args)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        for w in words:
            assert w in proc.stderr, (w, proc.stderr)
