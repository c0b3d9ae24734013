"""Dynamic NTK for llama-cpp-python: unscaled within the training context, static NTK with the
base for the request's length beyond it, contexts reused per length bucket over one model."""

import numpy as np
import pytest

from pyntk import PyntkError, reference
from pyntk.llama import DynamicNTK
from clirun import THREADS

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
    # Dynamic NTK's for 256 tokens: b * (8 * 256/128 - 7) ** (64/62)
    assert small.bucket_for(200) == 256
    base = reference.dynamic_base(small.scaling, 256)
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
    assert small.base_for(129) == small.base_for(256) == pytest.approx(reference.dynamic_base(small.scaling, 256))
    assert small.base_for(1024) > small.base_for(512) > small.base_for(256)
    with pytest.raises(PyntkError, match="exceeds max_context 1024"):
        small.bucket_for(1025)
    # one model, contexts kept per bucket (at most `cached` of them), reused when asked again
    a = small.context_for(300)
    assert small.context_for(500) is a
    b = small.context_for(100)
    assert b is not a and b.model is a.model
    small.context_for(700)  # a third bucket evicts the least recently used (512)
    assert sorted(small._contexts) == [128, 768]


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
