"""pyntk plan: the criterion, the recommendation, its agreement with published NTK alpha results,
gguf-set's use of it, and the `pyntk plan` command."""

import json

import pytest

from pyntk import RopeScaling, plan, reference
from pyntk.gguf_edit import plan_target, read_original_rope
from clirun import run

SMOL = dict(dims=64, base=1e5, training_context=8192)  # SmolLM2-135M
LLAMA1 = dict(dims=128, base=1e4, training_context=2048)
LLAMA2 = dict(dims=128, base=1e4, training_context=4096)

# Published usable context of LLaMA models with static NTK alpha and no fine-tuning:
# (model, alpha, usable tokens, source). docs/PLAN.md cites them in full.
PUBLISHED = [
    (LLAMA1, 2, 3400, "text-generation-webui PR #3149"),
    (LLAMA1, 4, 6200, "text-generation-webui PR #3149"),
    (LLAMA1, 8, 8800, "text-generation-webui PR #3149"),
    (LLAMA1, 16, 13000, "text-generation-webui PR #3149 (marked '?')"),
    (LLAMA1, 32, 20000, "text-generation-webui PR #3149 (marked '?')"),
    (LLAMA1, 2, 3400, "exllama issue #147"),
    (LLAMA1, 4, 5500, "exllama issue #147"),
    (LLAMA1, 8, 9000, "exllama issue #147"),
    (LLAMA2, 2, 6800, "exllama issue #158 (Llama 2 13B)"),
    (LLAMA2, 1.75, 6144, "text-generation-webui docs, 04 - Model Tab"),
    (LLAMA2, 2.5, 8192, "text-generation-webui docs, 04 - Model Tab"),
    (LLAMA2, 2, 8192, "rentry.org/u6iic ('~8k with just an alpha value of 2')"),
]



@pytest.mark.parametrize("arch,alpha,usable,source", PUBLISHED)
def test_criterion_agrees_with_published_alpha_results(arch, alpha, usable, source):
    predicted = plan.supported_context(RopeScaling(method="ntk", alpha=alpha, dims=arch["dims"],
                                                   base=arch["base"]), arch["training_context"])
    # Within 20% and never promising more than was observed: the criterion is a safe bound.
    assert 0.80 * usable <= predicted <= 1.01 * usable, (source, predicted, usable)


def test_criterion_over_all_published_results():
    ratios = []
    for arch, alpha, usable, _ in PUBLISHED:
        s = RopeScaling(method="ntk", alpha=alpha, dims=arch["dims"], base=arch["base"])
        ratios.append(plan.supported_context(s, arch["training_context"]) / usable)
    mean = sum(ratios) / len(ratios)
    assert 0.90 <= mean <= 1.0, ratios
    # and the two widely quoted Llama 2 recipes: 1.75 for 1.5x, 2.5 for 2x
    assert plan.alpha_for_context(6144, **_args(LLAMA2)) == pytest.approx(1.75, abs=0.02)
    assert plan.alpha_for_context(8192, **_args(LLAMA2)) == pytest.approx(2.5, abs=0.1)


def _args(arch):
    return dict(dims=arch["dims"], base=arch["base"], training_context=arch["training_context"])


@pytest.mark.parametrize("target", [8193, 12000, 16384, 32768, 131072])
def test_recommendation_is_the_smallest_alpha_keeping_every_pair_in_distribution(target):
    rec = plan.recommend(target, **SMOL)
    s = rec.scaling
    assert s.method == "ntk"
    assert s.alpha == plan.alpha_for_context(target, 64, 1e5, 8192)
    assert rec.choice.pairs_out_of_distribution == 0
    assert plan.supported_context(s, 8192) >= target - 1  # floor of a float product
    # one percent less alpha puts the critical pair out of distribution
    smaller = s.replace(alpha=1 + (s.alpha - 1) * 0.99)
    rows = plan.pair_rows(smaller, 8192, target)
    out = [r["pair"] for r in rows if not r["in_distribution"]]
    assert out and out[0] == rec.critical_dims // 2


def test_within_the_training_context_nothing_is_needed():
    rec = plan.recommend(8192, **SMOL)
    assert rec.scaling.method == "none"
    assert all(o.pairs_out_of_distribution == 0 for o in rec.options)


def test_options_tell_what_each_method_does():
    rec = plan.recommend(32768, **SMOL)
    by = {o.scaling.method: o for o in rec.options}
    assert tuple(by) == plan.COMPARED
    assert by["none"].pairs_out_of_distribution == 64 // 2 - rec.critical_dims // 2
    for m in ("linear", "ntk", "dynamic", "yarn"):
        assert by[m].pairs_out_of_distribution == 0, m
        assert by[m].supported_context == 32768, m
    # only Dynamic NTK leaves inputs within the training context as they were
    assert {m for m, o in by.items() if o.short_inputs_unchanged} == {"none", "dynamic"}
    assert by["linear"].scaling.factor == by["yarn"].scaling.factor == by["dynamic"].scaling.factor == 4


def test_pair_rows_per_pair_rule():
    s = RopeScaling(method="none", **{k: SMOL[k] for k in ("dims", "base")})
    rows = plan.pair_rows(s, 8192, 16384)
    for r in rows:
        assert r["turns_at_target"] == pytest.approx(2 * r["turns_in_context"])
        assert r["in_distribution"] == (r["turns_in_context"] >= 1)


def test_static_equivalent_of_dynamic_ntk():
    d = RopeScaling(method="dynamic", factor=4, original_context=8192, dims=64, base=1e5)
    assert plan.static_equivalent(d, 4096).method == "none"
    assert plan.static_equivalent(d, 8192).method == "none"
    for length in (8193, 16384, 32768, 100000):
        s = plan.static_equivalent(d, length)
        assert s.method == "ntk"
        assert s.ntk_base == pytest.approx(reference.dynamic_base(d, length), rel=1e-12)
    static = RopeScaling(method="yarn", factor=2, original_context=8192, dims=64, base=1e5)
    assert plan.static_equivalent(static, 16384) is static


def test_scaling_for_and_overrides():
    assert plan.scaling_for("linear", 32768, **SMOL).factor == 4
    assert plan.scaling_for("linear", 4096, **SMOL).factor == 1
    assert plan.scaling_for("ntk", 32768, alpha=4, **SMOL).alpha == 4
    y = plan.scaling_for("yarn", 16384, beta_fast=16, **SMOL)
    assert (y.factor, y.original_context, y.beta_fast) == (2, 8192, 16)
    with pytest.raises(ValueError, match="unknown method"):
        plan.scaling_for("ntkk", 16384, **SMOL)
    with pytest.raises(ValueError, match="does not apply"):
        plan.scaling_for("linear", 16384, alpha=2, **SMOL)


def test_acts_unscaled():
    for m in plan.COMPARED:
        assert plan.acts_unscaled(plan.scaling_for(m, 4096, **SMOL), 4096), m
    d = plan.scaling_for("dynamic", 32768, **SMOL)
    assert plan.acts_unscaled(d, 8192) and not plan.acts_unscaled(d, 8193)
    assert not plan.acts_unscaled(plan.scaling_for("yarn", 32768, **SMOL), 100)


@pytest.mark.model
@pytest.mark.parametrize("target", [12288, 16384, 32768])
def test_gguf_set_uses_the_same_recommendation(model_path, target):
    info = read_original_rope(model_path)
    rec = plan.recommend(target, dims=info.dims, base=info.base, training_context=info.original_context)
    assert plan_target(info, ctx=target).scaling == rec.scaling


@pytest.mark.model
def test_plan_command(model_path, tmp_path):
    data = json.loads(run("plan", model_path, "--ctx", 16384, "--json", check=0).stdout)
    assert data["recommended"]["method"] == "ntk"
    assert data["recommended"]["scaling"]["alpha"] == pytest.approx(plan.alpha_for_context(16384, 64, 1e5, 8192))
    assert data["critical_dims"] == 40 and len(data["pairs"]) == 32
    assert all(p["in_distribution"] for p in data["pairs"])
    assert data["apply"].endswith("--ctx 16384")
    png = tmp_path / "spectrum.png"
    out = run("plan", model_path, "--ctx", 16384, "--plot", png, check=0).stdout
    assert "recommended: ntk alpha=2.928" in out and "critical dimension 40 of 64" in out
    assert "in distribution" in out and "NO" not in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.model
def test_plan_errors_are_one_line(model_path):
    proc = run("plan", model_path, "--ctx", 16384, "--measure")
    assert proc.returncode != 0 and "--measure needs --text" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run("plan", model_path, "--ctx", 16384, "--text", "book.txt")
    assert proc.returncode != 0 and "only read by --measure" in proc.stderr
    proc = run("plan", "/nonexistent.gguf", "--ctx", 16384)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
