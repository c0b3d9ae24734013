"""Dynamic scaling for llama-cpp-python: unscaled within the training context, beyond it the
method set up for the request's length bucket (Dynamic NTK: static NTK with the base for that
length), contexts lent out one caller at a time and reused per bucket over one model."""

import json
import re
import threading

import numpy as np
import pytest

from pyntk import PyntkError, RopeScaling
from pyntk import llama as llama_module
from pyntk.dynamic import Cancelled, Dynamic, DynamicNTK, DynamicPolicy
from pyntk.llama import Model
from pyntk.perplexity import Candidate, evaluate
from clirun import THREADS, run

pytestmark = [pytest.mark.model, pytest.mark.llama]


def llama_logits(model_path, tokens, n_ctx, **kwargs):
    """Logits of every token from llama-cpp-python's high-level Llama (logits_all=True)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=THREADS,
                          n_threads_batch=THREADS, **kwargs)
    llm.eval(list(map(int, tokens)))
    out = np.array(llm.scores[:len(tokens)])
    llm.close()
    return out


@pytest.fixture(scope="module")
def small(model_path):
    # A pretend 128-token training context keeps "beyond it" cheap (the real one is 8192).
    with DynamicNTK(model_path, max_context=1024, original_context=128, threads=THREADS) as dyn:
        yield dyn


def test_within_training_context_equals_unscaled_model(model_path, rng):
    with DynamicNTK(model_path, max_context=32768, threads=THREADS) as dyn:
        assert dyn.training_context == 8192 and dyn.scaling.factor == 4
        tokens = rng.integers(0, 49152, size=32)
        ours = dyn.logits(tokens, max_new_tokens=64)
        assert dyn.bucket_for(96) == 8192 and dyn.base_for(96) == 1e5
    np.testing.assert_array_equal(ours, llama_logits(model_path, tokens, 8192))


def test_beyond_training_context_equals_static_ntk_with_that_lengths_base(model_path, small, rng):
    tokens = rng.integers(0, 49152, size=150)
    # 150 prompt + 50 to generate = 200 tokens -> the 256-token bucket, whose base is
    # Dynamic NTK's for 256 tokens: b * (8 * 256/128 - 7) ** (64/62), factor 8 = 1024 / 128
    assert small.bucket_for(200) == 256
    base = 1e5 * 9 ** (64 / 62)
    assert small.base_for(200) == pytest.approx(base, rel=1e-12)
    ours = small.logits(tokens, max_new_tokens=50)
    np.testing.assert_array_equal(ours, llama_logits(model_path, tokens, 256, rope_freq_base=base))
    # and the base did matter: the unscaled model gives other logits
    assert np.abs(ours - llama_logits(model_path, tokens, 256)).max() > 1.0


def test_short_requests_stay_unscaled_in_the_small_setup(model_path, small, rng):
    tokens = rng.integers(0, 49152, size=100)
    np.testing.assert_array_equal(small.logits(tokens), llama_logits(model_path, tokens, 128))


def test_buckets_bases_and_context_reuse(small):
    assert [small.bucket_for(n) for n in (1, 128, 129, 256, 257, 1024)] == [128, 128, 256, 256, 512, 1024]
    assert small.base_for(128) == 1e5
    assert small.base_for(129) == small.base_for(256) == pytest.approx(1e5 * 9 ** (64 / 62), rel=1e-12)  # as above
    assert small.base_for(1024) > small.base_for(512) > small.base_for(256)
    with pytest.raises(PyntkError, match="exceeds max_context 1024"):
        small.bucket_for(1025)
    # one model, contexts kept per bucket (at most `cached` of them), reused when asked again
    a = small.context_for(300)
    assert small.context_for(500) is a
    b = small.context_for(100)
    assert b is not a and b.model is a.model
    small.context_for(700)  # a third bucket evicts the least recently used (512)
    assert small.kept() == [(128, False), (768, False)]


def test_generate_is_greedy_and_stays_in_its_bucket(small):
    prompt = small.tokenize("The capital of France is")
    text = small.generate(prompt, max_tokens=8)
    assert isinstance(text, str) and text.strip()
    assert small.generate(prompt, max_tokens=8) == text  # greedy: deterministic
    # its first token is the argmax of the prompt's last logits in the same bucket
    first = int(np.argmax(small.logits(prompt, max_new_tokens=8)[-1]))
    assert text.startswith(small.detokenize([first]))
    assert small.generate("The capital of France is", max_tokens=8) == text  # str prompts too
    sampled = small.generate(prompt, max_tokens=8, temperature=1.0, seed=1)
    assert sampled == small.generate(prompt, max_tokens=8, temperature=1.0, seed=1)


def test_needs_a_length(model_path):
    with pytest.raises(PyntkError, match="give max_context"):
        DynamicNTK(model_path)


# --- Dynamic: any method, scaled per request -------------------------------------------------------

@pytest.mark.parametrize("method, kwargs", [
    # llama.cpp set up by hand for the 256-token bucket of a model pretending L0 = 128
    ("yarn", dict(rope_scaling_type=2, rope_freq_scale=0.5, yarn_orig_ctx=128)),
    ("linear", dict(rope_scaling_type=1, rope_freq_scale=0.5)),
    ("ntk", "alpha"),
])
def test_each_method_runs_set_up_for_its_bucket(model_path, rng, method, kwargs):
    if kwargs == "alpha":  # static NTK: base b * alpha^(d/(d-2)) with pyntk plan's alpha for 256:
        # d_extra = 2 * ceil(32 * ln(128 / 2pi) / ln(1e5)) = 2 * ceil(8.378) = 18, alpha = 2^(62/18),
        # so the base is 1e5 * 2^(62/18 * 64/62) = 1e5 * 2^(64/18)
        kwargs = dict(rope_freq_base=1e5 * 2 ** (64 / 18))
    tokens = rng.integers(0, 49152, size=150)
    with Dynamic(model_path, method, max_context=1024, original_context=128, threads=THREADS) as dyn:
        assert dyn.bucket_for(200) == 256
        ours = dyn.logits(tokens, max_new_tokens=50)
        within = dyn.logits(tokens[:100])
    np.testing.assert_array_equal(ours, llama_logits(model_path, tokens, 256, **kwargs))
    np.testing.assert_array_equal(within, llama_logits(model_path, tokens[:100], 128))


def test_policy_buckets_and_scalings():
    yarn = DynamicPolicy("yarn", 1e5, 64, 8192, 32768)
    assert [yarn.bucket_for(n) for n in (1, 8192, 8193, 16384, 20000, 32768)] == \
        [8192, 8192, 8448, 16384, 20224, 32768]
    assert yarn.scaling_for(8000) == RopeScaling(method="none", base=1e5, dims=64)
    assert yarn.scaling_for(16384) == RopeScaling(method="yarn", base=1e5, dims=64, factor=2,
                                                  original_context=8192)
    assert yarn.scaling_for(16000).factor == 16128 / 8192  # its bucket's, not its own length's
    assert yarn.scaling == yarn.scaling_for(32768)  # the target's setup
    ntk = DynamicPolicy("ntk", 1e5, 64, 8192, 32768)
    # the criterion's alpha for 2x (tests/test_plan.py HAND): 2^(62/40) = 2.928171
    assert ntk.scaling_for(16384).alpha == pytest.approx(2 ** (62 / 40), rel=1e-12)
    linear = DynamicPolicy("linear", 1e5, 64, 8192, 32768)
    assert linear.scaling_for(24576) == RopeScaling(method="linear", base=1e5, dims=64, factor=3)
    # Hugging Face's dynamic NTK keeps its s = max_context / L0 and takes the base for B
    dyn = DynamicPolicy("dynamic", 1e5, 64, 8192, 32768, factor=4.0)
    # b * (s * B/L0 - (s - 1))^(d/(d-2)) = 1e5 * (4 * 16384/8192 - 3)^(64/62)
    assert dyn.scaling_for(16384).ntk_base == pytest.approx(1e5 * 5 ** (64 / 62), rel=1e-12)
    assert "factor B/8192" in yarn.describe() and "unscaled within" in yarn.describe()
    with pytest.raises(PyntkError, match="exceeds max_context 32768"):
        yarn.bucket_for(32769)
    with pytest.raises(ValueError, match="factor applies to method 'dynamic' only"):
        DynamicPolicy("yarn", 1e5, 64, 8192, 32768, factor=2.0)
    with pytest.raises(ValueError, match="unknown method"):
        DynamicPolicy("rope2", 1e5, 64, 8192, 32768)


def test_refuses_a_method_llama_cpp_cannot_run(model_path):
    with pytest.raises(PyntkError, match="rope_freqs"):
        Dynamic(model_path, "llama3", max_context=16384)
    with pytest.raises(PyntkError, match="give max_context"):
        Dynamic(model_path, "yarn")


def test_a_context_is_lent_to_one_caller_at_a_time(model_path):
    with Dynamic(model_path, "yarn", max_context=1024, original_context=128, cached=1,
                 threads=THREADS) as dyn:
        gave_up = threading.Event()
        gave_up.set()
        got = []
        with dyn.acquire(100) as ctx:
            assert dyn.kept() == [(128, True)]
            with pytest.raises(Cancelled):  # the only context is lent out: the caller must wait
                with dyn.acquire(100, give_up=gave_up):
                    pass
            waiter = threading.Thread(target=lambda: got.append(dyn.context_for(300)))
            waiter.start()
            waiter.join(0.5)
            assert waiter.is_alive() and not got  # still waiting for the context
        waiter.join(60)
        # once it was returned, the waiter got a context of its own bucket in its place
        assert len(got) == 1 and got[0] is not ctx and dyn.kept() == [(512, False)]
        assert ctx.ctx is None  # the evicted context was freed


def capture_llama_log():
    import llama_cpp

    lines = []
    callback = llama_cpp.llama_log_callback(lambda level, text, data: lines.append(text.decode()))
    llama_cpp.llama_log_set(callback, None)
    return lines, callback


@pytest.mark.parametrize("which", ["smollm2", pytest.param("gemma3", marks=pytest.mark.gemma)])
def test_kv_bytes_is_what_llama_cpp_allocates(request, which):
    import llama_cpp

    path = request.getfixturevalue("model_path" if which == "smollm2" else "gemma_path")
    # a 200-token training context: its bucket's 200 cells are padded to 256 by llama.cpp
    with Dynamic(path, "yarn", max_context=4096, original_context=200, cached=1, threads=THREADS) as dyn:
        lines, callback = capture_llama_log()
        try:
            for length in (100, 300, 1000, 4096):
                lines.clear()
                with dyn.acquire(length):
                    pass
                # llama.cpp's "CPU KV buffer size = X MiB" (two caches for sliding-window models)
                mib = [float(x) for x in re.findall(r"KV buffer size =\s*([\d.]+) MiB", "".join(lines))]
                assert mib, "".join(lines)
                assert dyn.kv_bytes(length) / 2**20 == pytest.approx(sum(mib), abs=0.006 * len(mib))
        finally:
            llama_cpp.llama_log_set(llama_module._QUIET, None)
            del callback


LOGGED = {"kv": r"KV buffer size =\s*([\d.]+) MiB", "compute": r"compute buffer size =\s*([\d.]+) MiB",
          "output": r"output buffer size =\s*([\d.]+) MiB"}


@pytest.mark.parametrize("flash_attn", [False, True], ids=["no-fa", "fa"])
@pytest.mark.parametrize("which, lengths", [
    pytest.param("smollm2", (4096, 16384, 32768), id="smollm2"),
    pytest.param("gemma3", (4096, 32768, 65536), marks=pytest.mark.gemma, id="gemma3")])
def test_memory_covers_what_llama_cpp_allocates(request, which, lengths, flash_attn):
    """Creating a context, llama.cpp logs the buffers it allocates: the KV cache (two for
    sliding-window models), the compute buffer and the logits ("output"). Dynamic.memory estimates
    each from the model's shape beforehand: never below what llama.cpp takes, at most 3% above
    (the compute buffer alone at most 5%). Without flash attention the compute buffer grows with the
    context (SmolLM2 at 32768: 646 MiB, nearly its 720 MiB KV cache); Gemma 3's 262144-token
    vocabulary keeps its logits (512 MiB for a 512-token batch) the larger part until 65536 tokens,
    where its attention scores and two masks (one per cache) pass them."""
    import llama_cpp

    path = request.getfixturevalue("model_path" if which == "smollm2" else "gemma_path")
    with Dynamic(path, "yarn", max_context=max(lengths), original_context=lengths[0], cached=1,
                 threads=THREADS, flash_attn=flash_attn) as dyn:
        lines, callback = capture_llama_log()
        try:
            for length in lengths:
                lines.clear()
                with dyn.acquire(length):
                    pass
                text = "".join(lines)
                logged = {part: sum(float(x) * 2**20 for x in re.findall(pattern, text))
                          for part, pattern in LOGGED.items()}
                assert all(logged.values()), text
                est = dyn.memory(length)
                rounding = 4 * 0.005 * 2**20  # llama.cpp prints MiB to 2 decimals
                ours, theirs = est.kv + est.compute + est.output, sum(logged.values())  # work: not logged
                assert theirs - rounding <= ours <= 1.03 * theirs, (length, est, logged)
                assert logged["compute"] - rounding <= est.compute <= 1.05 * logged["compute"], (length, est, logged)
                assert dyn.memory_bytes(length) == ours + est.work and (est.work == 0) == flash_attn
        finally:
            llama_cpp.llama_log_set(llama_module._QUIET, None)
            del callback


def test_moved_names_still_import_from_pyntk_llama():
    # dynamic scaling lives in pyntk.dynamic; pyntk.llama.DynamicNTK was public API before the move
    from pyntk.llama import Dynamic as OldDynamic, DynamicNTK as OldDynamicNTK

    assert (OldDynamic, OldDynamicNTK, llama_module.DynamicPolicy) == (Dynamic, DynamicNTK, DynamicPolicy)
    with pytest.raises(AttributeError):
        llama_module.NoSuchName


def test_ppl_dynamic_yarn_is_yarn_set_up_for_each_window(model_path, rng):
    model = Model(model_path, threads=THREADS)
    tokens = rng.integers(0, 49152, size=256).astype(np.int32)
    policy = DynamicPolicy("yarn", 1e5, 64, 64, 256, bucket=64)  # pretend L0 = 64
    (dyn64, dyn128, dyn256) = evaluate(model, tokens, [64, 128, 256],
                                       [Candidate("dynamic-yarn", policy.scaling, policy)])
    static = {n: RopeScaling(method="yarn", base=1e5, dims=64, factor=n / 64, original_context=64)
              for n in (128, 256)}
    plain = RopeScaling(method="none", base=1e5, dims=64)
    (none64,) = evaluate(model, tokens, [64], [Candidate("none", plain)], span=256)
    (yarn128,) = evaluate(model, tokens, [128], [Candidate("yarn", static[128])], span=256)
    (yarn256,) = evaluate(model, tokens, [256], [Candidate("yarn", static[256])])
    assert (dyn64.ppl, dyn128.ppl, dyn256.ppl) == (none64.ppl, yarn128.ppl, yarn256.ppl)
    assert dyn128.scaling == static[128] and dyn64.scaling.method == "none"
    assert dyn128.dynamic == policy.describe() and dyn128.parameters() == policy.describe()
    assert len({none64.ppl, yarn128.ppl, yarn256.ppl}) == 3  # the setups really differ


def test_ppl_command_accepts_dynamic_methods(model_path, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The keeper wrote the wind and the sea in his notebook every evening. " * 40)
    proc = run("ppl", model_path, "--text", text, "--ctx", "64,128", "--method", "none,dynamic-yarn",
               "--threads", THREADS, "--json", check=0)
    got = {(r["label"], r["ctx"]): r for r in json.loads(proc.stdout)["results"]}
    for n in (64, 128):  # within the 8192-token training context: unscaled
        assert got[("dynamic-yarn", n)]["ppl"] == got[("none", n)]["ppl"]
        assert got[("dynamic-yarn", n)]["dynamic"].startswith("yarn set up for each request's length")
    for bad, message in [("dynamic-yarn:factor=2", "takes no parameters"),
                         ("dynamic-llama3", "rope_freqs"), ("dynamic-rope2", "unknown method")]:
        proc = run("ppl", model_path, "--text", text, "--ctx", "64", "--method", bad, check=1)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
