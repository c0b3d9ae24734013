"""`pyntk plan --measure`: the search against functions whose optimum is known, its budget and
cache with a made-up clock, and an interrupted then resumed run on the real model."""

import json
import math
import os
import shlex
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyntk import RopeScaling, evidence, plan, search
from pyntk.cli import build_parser
from pyntk.cli import plan as plan_command
from pyntk.cli._common import scaling_from_args
from clirun import THREADS

ROOT = Path(__file__).resolve().parent.parent
NTK = RopeScaling(method="ntk", alpha=2.928171391891251, dims=64, base=1e5)
YARN = RopeScaling(method="yarn", factor=2, original_context=8192, dims=64, base=1e5)


def bowl(**optimum):
    """A perplexity with its minimum at ``optimum`` (on a log scale, as the search works)."""
    return lambda s: 10 + sum(math.log(getattr(s, k) / v) ** 2 for k, v in optimum.items())


def _search(starts, ppl, cache, budget=1e9, step=10.0):
    clock = [0.0]

    def measure(s):
        clock[0] += step  # every measurement takes `step` made-up seconds
        return ppl(s)

    return search.run(starts, measure, cache, budget_seconds=budget, clock=lambda: clock[0])


def _cache(tmp_path):
    return search.Cache(tmp_path / "c.json", {"test": True})


@pytest.mark.parametrize("optimum", [1.8, 2.9, 6.0, 1.0])
def test_narrows_ntk_alpha_to_the_optimum(tmp_path, optimum):
    out = _search([NTK], bowl(alpha=optimum), _cache(tmp_path))
    assert out.complete
    # the search stops when both neighbours at a step below 1.04^2 are worse: for a function with
    # one minimum, the optimum lies within that step of the winner (plus 4-digit rounding)
    assert abs(math.log(out.winner.scaling.alpha / optimum)) < math.log(1.04 ** 2)
    assert out.winner.scaling.alpha >= 1.0
    # ... because it measured a worse neighbour on each side within that step (or the bound 1)
    win = out.winner.scaling.alpha
    ratios = [p.scaling.alpha / win for p in out.points]
    assert any(1 < r < 1.04 ** 2 * 1.001 for r in ratios)
    assert win == 1.0 or any(1 < 1 / r < 1.04 ** 2 * 1.001 for r in ratios)


def test_narrows_yarn_factor_then_temperature(tmp_path):
    out = _search([YARN], bowl(factor=2.6, attn_factor=1.07), _cache(tmp_path))
    w = out.winner.scaling
    assert abs(math.log(w.factor / 2.6)) < math.log(1.04 ** 2)
    assert abs(math.log(w.attn_factor / 1.07)) < math.log(1.02 ** 2)
    assert (w.method, w.original_context, w.beta_fast) == ("yarn", 8192, 32)
    # the factor is narrowed first, at the rule's temperature
    first_temperature = next(i for i, p in enumerate(out.points) if p.scaling.attn_factor != 1)
    assert all(p.scaling.attn_factor == 1 for p in out.points[:first_temperature])


def test_budget_and_resume(tmp_path):
    ppl = lambda s: bowl(alpha=1.8)(s) if s.method == "ntk" else bowl(factor=3.1)(s)  # noqa: E731
    cache = _cache(tmp_path)
    # 10 s each, budget 35 s: the first at 0, the second at 10 (10 + 10 <= 35), the third at 20
    # (20 + 10 <= 35); the fourth would end at 40 > 35
    first = _search([YARN, NTK], ppl, cache, budget=35)
    assert not first.complete and first.new == 3
    # families take turns from their starting points (the rule's setups)
    assert [p.scaling for p in first.points[:2]] == [YARN, NTK]
    assert [p.family for p in first.points] == ["yarn", "ntk", "yarn"]
    # a new run (a new process: the cache read back from its file) reuses them at no cost
    again = _search([YARN, NTK], ppl, search.Cache(tmp_path / "c.json", {}), budget=35)
    assert [(p.scaling, p.ppl) for p in again.points[:3]] == [(p.scaling, p.ppl) for p in first.points]
    assert all(p.cached for p in again.points[:3]) and not any(p.cached for p in again.points[3:])
    assert again.new == 3
    # and an unlimited run ends where one uninterrupted run ends
    done = _search([YARN, NTK], ppl, search.Cache(tmp_path / "c.json", {}))
    fresh = _search([YARN, NTK], ppl, _cache(tmp_path / "fresh"))
    assert done.complete and [p.scaling for p in done.points] == [p.scaling for p in fresh.points]
    assert done.new == len(fresh.points) - 6


def test_a_warm_cache_never_stops_a_run_before_its_first_measurement(tmp_path):
    # another run (another --runtime: other setups) left a mean of 100 s in the cache; a 50 s budget
    # still measures the first setup, then stops: (100 + 10) / 2 = 55 s more would end at 65 s
    cache = _cache(tmp_path)
    cache.put(NTK.replace(alpha=5.0), 12.0, 100.0)
    out = _search([YARN], bowl(factor=2.6), cache, budget=50)
    assert [p.scaling for p in out.points] == [YARN] and out.new == 1 and not out.complete
    rec = plan.recommend(16384, dims=64, base=1e5, training_context=8192)  # yarn factor 2 (test_plan.py)
    found = search.summary(out, rec)
    assert found["winner"]["scaling"] == YARN.to_dict() and found["recommendation_vs_winner"] == 0


def test_a_recommendation_the_search_does_not_narrow(tmp_path, monkeypatch, capsys):
    # Made-up evidence where Dynamic NTK measured best (a Llama-2-shaped model at 2x): on the pyntk
    # runtime it is recommended, and the search, which narrows no Dynamic NTK, starts from the runner-up
    llama2 = dict(dims=128, base=1e4, training_context=4096)
    ppls = {"none": (99, 5), "linear": (30, 9), "ntk": (6.0, 5.2), "dynamic": (4.0, 5), "yarn": (5.0, 5.1)}
    setups = tuple(evidence.Setup(label, plan.scaling_for(label, 8192, **llama2), *ppl) for label, ppl in ppls.items())
    made_up = evidence.Measurement("made-up", "a text", 128, 1e4, 4096, 8192, "-", "-", setups)
    monkeypatch.setattr(evidence, "measurements", lambda: (made_up,))
    rec = plan.recommend(8192, runtime="pyntk", **llama2)
    assert rec.scaling.method == "dynamic" and rec.runner_up.scaling.method == "yarn"
    assert search.starts(rec) == [rec.runner_up.scaling]
    out = _search(search.starts(rec), bowl(factor=2.6), _cache(tmp_path))
    found = search.summary(out, rec)
    assert found["recommendation_vs_winner"] is None and found["winner"]["scaling"]["method"] == "yarn"
    plan_command._print_measured({**found, "apply": "pyntk gguf-set ..."}, rec)
    assert "the recommendation, dynamic factor=2 original_context=4096, was not measured" in capsys.readouterr().out


def test_cache_file_is_keyed_by_model_tokens_and_target(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(search, "FINGERPRINT_BYTES", 7)  # the file's last 7 bytes stand for its weights
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 100 + b"weights")
    a = search.cache_path(str(model), [1, 2, 3], 512)
    assert a.parent == tmp_path / "pyntk" / "measure"
    assert search.cache_path(str(model), [1, 2, 3], 512) == a
    assert search.cache_path(str(model), [1, 2, 4], 512) != a
    assert search.cache_path(str(model), [1, 2, 3], 1024) != a
    model.write_bytes(b"y" * 100 + b"weights")  # metadata at the start changed (gguf-set): same cache
    assert search.cache_path(str(model), [1, 2, 3], 512) == a
    model.write_bytes(b"y" * 100 + b"weightz")
    assert search.cache_path(str(model), [1, 2, 3], 512) != a


def _short_context_copy(model_path: Path, folder: Path, context: int) -> Path:
    """The real model with llama.context_length patched (a u32 of the same size) to ``context``,
    so that pyntk takes it as the training context and short texts reach past it."""
    folder.mkdir(parents=True)
    out = folder / "smol lm.gguf"
    data = bytearray(model_path.read_bytes())
    name = b"llama.context_length"
    entry = struct.pack("<Q", len(name)) + name + struct.pack("<I", 4)  # key, then type u32
    at = data.index(entry + struct.pack("<I", 8192)) + len(entry)
    data[at:at + 4] = struct.pack("<I", context)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.model
def test_measure_resumes_after_an_interruption(model_path, tmp_path):
    model = _short_context_copy(Path(model_path), tmp_path / "my models", 64)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    argv = ["plan", str(model), "--ctx", "128", "--measure", "--text", str(ROOT / "README.md"),
            "--threads", str(THREADS)]
    proc = subprocess.Popen([sys.executable, "-m", "pyntk.cli", *argv, "--budget", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "cache" / "pyntk" / "measure"
    deadline = time.monotonic() + 120
    while not list(folder.glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "measured yarn factor=2" in err
    [cache] = folder.glob("*.json")
    kept = json.loads(cache.read_text())["results"]
    assert kept and len(kept) < 6

    resumed = subprocess.run([sys.executable, "-m", "pyntk.cli", *argv, "--budget", "0.15", "--json"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "measured" not in resumed.stderr  # no progress with --json
    m = json.loads(resumed.stdout)["measured"]
    points = m["points"]
    assert [(p["scaling"], p["ppl"]) for p in points[:len(kept)]] == [(k["scaling"], k["ppl"]) for k in kept]
    assert all(p["cached"] for p in points[:len(kept)])
    assert m["new_measurements"] == sum(not p["cached"] for p in points)
    assert m["winner"]["ppl"] == min(p["ppl"] for p in points)
    # the command that writes the winner, quoted for the shell, gives gguf-set the winner's scaling
    argv = shlex.split(m["apply"])
    assert argv[:3] == ["pyntk", "gguf-set", str(model)]
    args = build_parser().parse_args(argv[1:])
    assert args.ctx == 128
    scaling = scaling_from_args(args, base=1e5, dims=64, original_context=64)
    assert scaling == RopeScaling(**m["winner"]["scaling"])
