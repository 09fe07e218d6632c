"""Generation: cached == uncached, sampling rules, context overflow, streaming text."""
import numpy as np
import pytest

from gpt import GPT, GPTConfig
from gpt.core.generate import (SamplingParams, _nucleus, generate, generate_tokens,
                               generate_uncached, sample_next, stream_text)


@pytest.fixture(scope="module")
def model():
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16),
               rng=np.random.default_rng(0))


def test_cached_greedy_equals_uncached(model):
    prompt = [3, 14, 15, 9, 2]
    assert generate(model, prompt, max_new_tokens=9, temperature=0) == \
        generate_uncached(model, prompt, 9)


def test_cached_and_uncached_logits_agree_at_every_step(model):
    # Prefill of a 5-token prompt, then 10 one-token decode steps, up to the full context of 16.
    prompt = [7, 1, 30, 22, 5]
    cached, uncached = [], []
    tokens = list(generate_tokens(
        model, prompt, SamplingParams(max_new_tokens=11, temperature=0),
        on_logits=lambda row: cached.append(row.copy())))
    assert generate_uncached(model, prompt, 11,
                             on_logits=lambda row: uncached.append(row.copy())) == tokens
    assert len(cached) == len(uncached) == 11
    for step, (a, b) in enumerate(zip(cached, uncached)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")


def test_generation_past_the_context_keeps_going(model):
    out = generate(model, [1, 2, 3], max_new_tokens=40, temperature=1.0, seed=0)
    assert len(out) == 40 and all(0 <= t < 50 for t in out)
    long_prompt = list(range(30))                      # longer than block_size 16
    assert len(generate(model, long_prompt, max_new_tokens=5, temperature=0)) == 5


def test_seed_makes_sampling_repeatable(model):
    a = generate(model, [1, 2], max_new_tokens=10, temperature=1.0, seed=7)
    b = generate(model, [1, 2], max_new_tokens=10, temperature=1.0, seed=7)
    assert a == b


def test_stop_token_ends_generation(model):
    greedy = generate(model, [4, 5], max_new_tokens=10, temperature=0)
    stopped = generate(model, [4, 5], max_new_tokens=10, temperature=0,
                       stop_tokens=(greedy[3],))
    assert stopped == greedy[:greedy.index(greedy[3])]


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 1.0, 5.0, 2.0])
    assert sample_next(logits, SamplingParams(temperature=0), rng) == 2
    top1 = SamplingParams(temperature=1.0, top_k=1)
    assert {sample_next(logits, top1, rng) for _ in range(20)} == {2}
    top2 = SamplingParams(temperature=5.0, top_k=2)
    assert {sample_next(logits, top2, rng) for _ in range(200)} == {2, 3}
    nucleus = SamplingParams(temperature=1.0, top_p=0.5)           # p(2) alone is ~0.93
    assert {sample_next(logits, nucleus, rng) for _ in range(50)} == {2}
    penalised = SamplingParams(temperature=0, repetition_penalty=100.0)
    assert sample_next(logits, penalised, rng, history=[2]) == 3
    counts = np.bincount([sample_next(np.log([0.2, 0.8]), SamplingParams(), rng)
                          for _ in range(4000)], minlength=2)
    assert 0.76 < counts[1] / 4000 < 0.84


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("spread", [0.3, 3.0])            # a flat distribution, a peaked one
def test_the_nucleus_is_what_a_full_sort_gives(top_p, spread):
    # The nucleus is searched among the most likely few first; a flat distribution needs
    # many, so the search grows, up to the whole row.
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(5000) * spread
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    n_keep = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1
    assert np.array_equal(_nucleus(probs, top_p), np.sort(order[:n_keep]))


def test_top_k_and_top_p_sample_the_renormalised_distribution_of_a_large_vocabulary():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(20_000).astype(np.float32)
    best = np.argsort(-logits)[:3]
    logits[best] = [14.0, 13.5, 13.0]                      # three likely tokens, many unlikely
    before = logits.copy()
    probs = np.exp(logits[best].astype(np.float64))
    probs /= probs.sum()                                     # the top 3, renormalised
    params = SamplingParams(temperature=1.0, top_k=3, repetition_penalty=1.3)
    picks = [sample_next(logits, params, rng) for _ in range(3000)]
    assert set(picks) <= set(best.tolist())
    frequencies = np.array([picks.count(int(t)) for t in best]) / len(picks)
    assert np.abs(frequencies - probs).max() < 0.03
    # top_p: the most likely token holds about half the probability, so it alone is the
    # nucleus at 0.3, and the three make that at 0.9
    top = int(best[0])
    assert {sample_next(logits, SamplingParams(top_p=0.3), rng) for _ in range(20)} == {top}
    assert {sample_next(logits, SamplingParams(top_p=0.9), rng) for _ in range(200)} == \
        set(best.tolist())
    # a penalty applies to the tokens seen, on a copy: the caller's row is unchanged
    penalised = SamplingParams(temperature=0, repetition_penalty=100.0)
    assert sample_next(logits, penalised, rng, history=[top]) == int(best[1])
    assert np.array_equal(logits, before)


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_empty_prompt_is_a_clear_error(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], max_new_tokens=3)


class ByteTokenizer:
    """ids are bytes: enough to test streaming of multi-byte characters."""
    def decode_bytes(self, ids):
        return bytes(ids)


def test_stream_text_waits_for_complete_characters_and_honours_stop_strings():
    tok = ByteTokenizer()
    text = "héllo 🙂 wor"
    pieces = list(stream_text(tok, iter(text.encode())))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)

    closed = []

    def tokens():
        try:
            yield from "answer###more text".encode()
        finally:
            closed.append(True)
    pieces = list(stream_text(tok, tokens(), stop_strings=["###"]))
    assert "".join(pieces) == "answer" and closed == [True]
    # a partial match that turns out not to be a stop string is released
    assert "".join(stream_text(tok, iter(b"a##b"), stop_strings=["###"])) == "a##b"


def test_generate_tokens_polls_should_stop(model):
    calls = []

    def stop_after_three():
        calls.append(1)
        return len(calls) > 3
    out = list(generate_tokens(model, [1], SamplingParams(max_new_tokens=20),
                               should_stop=stop_after_three))
    assert len(out) == 3


def test_vocab_size_keeps_sampling_inside_the_tokenizers_vocabulary():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 0.0, 9.0, 9.0])          # ids 2 and 3: padding beyond a 2-token vocab
    params = SamplingParams(temperature=1.0, vocab_size=2)
    assert {sample_next(logits, params, rng) for _ in range(50)} <= {0, 1}
    assert sample_next(logits, SamplingParams(temperature=0, vocab_size=2), rng) in (0, 1)
