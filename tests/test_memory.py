"""Memory estimates: close to what a training step really allocates, and a one-line refusal."""
import tracemalloc

import numpy as np
import pytest

from gpt import GPT, GPTConfig, load_pretrained, save_pretrained
from gpt.core.memory import (GiB, MemoryEstimateError, available_bytes, check_fits,
                             kv_cache_estimate, training_estimate, weights_estimate)


@pytest.mark.parametrize("shape", [dict(n_layer=2, n_embd=64, n_head=2, block_size=64),
                                   dict(n_layer=3, n_embd=96, n_head=4, block_size=128)])
def test_the_activation_estimate_is_close_to_a_measured_step(shape):
    batch, vocab = 4, 512
    model = GPT(GPTConfig(vocab_size=vocab, **shape))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, vocab, (batch, shape["block_size"]))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        model.loss(idx, idx).backward()
        measured = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    n_params = sum(p.data.size for p in model.parameters())
    estimate = training_estimate(n_params, vocab_size=vocab, batch_size=batch, **shape)
    activations = estimate.parts["activations of one step"]
    assert 0.9 * measured <= activations <= 1.6 * measured
    assert estimate.parts["optimizer state"] == 8 * n_params


def test_check_fits_refuses_in_one_line_with_the_estimate_and_the_advice():
    estimate = training_estimate(10**9, 48, 1600, 25, 50257, batch_size=64, block_size=1024)
    with pytest.raises(MemoryEstimateError) as error:
        check_fits(estimate, "lower --batch-size or --block-size", available=2 * GiB)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("training needs about ")
    assert "only 2.0 GiB is available: lower --batch-size or --block-size" in message
    check_fits(weights_estimate(1000), "never shown", available=GiB)         # fits: silent


def test_kv_cache_and_available_memory():
    assert kv_cache_estimate(2, 1, 4, 100, 16).total == 2 * 2 * 4 * 100 * 16 * 4
    free = available_bytes()
    assert free is None or free > 0


def test_a_checkpoint_too_big_for_the_memory_is_refused_before_loading(tmp_path, monkeypatch):
    save_pretrained(GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1,
                                  n_embd=8)), tmp_path)
    monkeypatch.setattr("gpt.core.memory.available_bytes", lambda: 1000)
    with pytest.raises(MemoryEstimateError, match="the model needs about .* only 0 MiB is "
                                                  "available: .* too big for this machine"):
        load_pretrained(tmp_path)

