"""The decode paths of gpt.core.llama that exist for speed, against what they stand in for.

A chat decodes one sequence one token at a time, and `Llama._infer` takes shortcuts there:
on one thread, a single row's matrix-vector products by einsum (and the tied head's by
vecdot), which batched decoding and prefill never take; on more, one thread whose products
BLAS's threads split; and attention of the one new position with its first product turned
round. The tests in test_llama.py decode batches of two, so the
single-row shortcuts are checked here with one sequence: against PyTorch's KV-cached decode
of the reference checkpoints, and against our own autograd forward.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from _paths import reference_file

from autograd import no_grad
from autograd.ops.attention import attention_forward
import gpt.core.llama as llama_module
from gpt.core.llama import _EINSUM_MAX_WIDTH, Llama, LlamaConfig, _attend_newest, _project
from gpt.io.checkpoint import load_pretrained

TOL = 1e-4


def tiny_config(**changes) -> LlamaConfig:
    values = dict(vocab_size=40, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                  intermediate_size=24)
    return LlamaConfig(**{**values, **changes})


def decode_one_at_a_time(model: Llama, tokens: np.ndarray, prefill: int) -> np.ndarray:
    """Logits (T, V) of one sequence: `prefill` tokens at once, then one token per step."""
    with no_grad():
        cache = model.new_kv_cache(batch_size=1)
        parts = [model(tokens[None, :prefill], kv_cache=cache).data[0]]
        parts += [model(tokens[None, t:t + 1], kv_cache=cache).data[0]
                  for t in range(prefill, len(tokens))]
    return np.concatenate(parts, axis=0)


# One thread: NumPy's own loops or BLAS, whichever `_own_loops_read_faster` found faster
# (forced here, so both are checked on any machine); two threads: BLAS's.
PATHS = {"own loops": (1, True), "BLAS, one thread": (1, False), "BLAS, two threads": (2, None)}


def take_path(model: Llama, path: str) -> None:
    threads, own_loops = PATHS[path]
    model.inference_threads = threads
    if own_loops is not None:
        for layout in (True, False):
            model._own_loops_faster[layout] = own_loops


@pytest.mark.parametrize("name", ["hf-llama-tiny", "hf-qwen3-tiny"])
@pytest.mark.parametrize("path", PATHS)
def test_one_sequence_decodes_as_pytorch_does(name, path, monkeypatch):
    directory = reference_file(name)
    with np.load(directory / "reference.npz") as data:
        x, decode_logits = data["x"], data["decode_logits"]
    model = load_pretrained(directory).eval()          # dropout off: generation's path
    take_path(model, path)
    chosen = []
    real_project = llama_module._project
    monkeypatch.setattr(llama_module, "_project",
                        lambda rows, w, own_loops=True: chosen.append(own_loops)
                        or real_project(rows, w, own_loops))
    for row in range(len(x)):                         # each sequence of the batch on its own
        ours = decode_one_at_a_time(model, x[row], prefill=1)
        assert np.abs(ours - decode_logits[row]).max() < TOL
    assert set(chosen) == {PATHS[path][1] is True}          # the path asked for was taken


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("changes", [
    dict(),
    dict(n_kv_head=3, n_head=6, head_dim=4, qk_norm=True, tie_word_embeddings=True),
    dict(n_kv_head=4, mlp="relu2", logit_softcap=5.0),
])
def test_one_sequence_decodes_as_the_autograd_forward_computes(changes, path):
    model = Llama(tiny_config(**changes), rng=np.random.default_rng(0)).eval()
    take_path(model, path)
    tokens = np.random.default_rng(1).integers(0, 40, size=12)
    with no_grad():
        full = model(tokens[None]).data[0]
    assert np.abs(decode_one_at_a_time(model, tokens, prefill=5) - full).max() < 1e-5


@pytest.mark.parametrize("own_loops", [True, False])     # False: BLAS, whatever the shapes
@pytest.mark.parametrize("rows, width, layout", [
    (1, 48, "ours"),                           # one row, narrow: einsum
    (1, _EINSUM_MAX_WIDTH + 8, "ours"),        # one row, wider than that: BLAS
    (1, 48, "strided"),                        # a strided view (a thread's columns): BLAS
    (1, 48, "transposed"),                     # the tied head, E.T: vecdot
    (3, 48, "ours"),                           # several rows: BLAS
    (3, 48, "transposed"),
])
def test_project_is_the_matrix_product(rows, width, layout, own_loops):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 64)).astype(np.float32)
    weight = rng.standard_normal((64, 2 * width)).astype(np.float32)
    weight = {"ours": weight[:, :width].copy(), "strided": weight[:, ::2],
              "transposed": weight[:, :width].T.copy().T}[layout]
    expected = x.astype(np.float64) @ weight.astype(np.float64)
    got = _project(x, weight, own_loops=own_loops)
    assert got.shape == (rows, width) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4


def test_attention_of_the_newest_position_is_attention_forwards():
    # q (B, h, r, D) against keys and values (B, h, S, D) that are views of a larger cache,
    # as a decode step passes them.
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    cache = rng.standard_normal((2, 2, 3, 16, 8)).astype(np.float32)
    keys, values = cache[0, :, :, :11], cache[1, :, :, :11]
    expected = attention_forward(q, keys, values, is_causal=False, dropout_p=0.0, rng=None)[0]
    got = _attend_newest(q, keys, values)
    assert got.shape == (2, 3, 4, 8) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-6


@pytest.mark.parametrize("slow_kernel", [True, False])
def test_the_faster_one_row_kernel_is_found_by_timing_both(slow_kernel, monkeypatch):
    # `_project` made slow on one side (own_loops == slow_kernel): the probe must pick the
    # other, having run each kernel over every sampled weight.
    weights = [np.ones((8, 4), np.float32), np.ones((4, 8), np.float32).T, np.ones((8, 8))]
    calls = {True: [], False: []}

    def timed(rows, weight, own_loops=True):
        calls[own_loops].append(weight.shape)
        if own_loops == slow_kernel:
            time.sleep(0.002)
        return rows @ weight

    monkeypatch.setattr(llama_module, "_project", timed)
    own_faster = llama_module._own_loops_read_faster(weights, min_seconds=0.01)
    assert own_faster is (not slow_kernel)
    for side in calls.values():
        assert {w.shape for w in weights} <= set(side)


def test_a_model_times_the_kernels_once_per_layout_and_only_for_one_thread(monkeypatch):
    probes = []
    monkeypatch.setattr(llama_module, "_own_loops_read_faster",
                        lambda weights, **kw: probes.append(len(weights)) or True)
    model = Llama(tiny_config(), rng=np.random.default_rng(0)).eval()
    tokens = np.random.default_rng(1).integers(0, 40, size=8)
    model.inference_threads = 2
    decode_one_at_a_time(model, tokens, prefill=3)
    assert probes == []                             # two threads: BLAS's, nothing to time
    model.inference_threads = 1
    decode_one_at_a_time(model, tokens, prefill=3)
    decode_one_at_a_time(model, tokens, prefill=3)
    assert probes == [len(model.projections())]     # once, over every projection's weight
    for linear in model.projections():              # the layout of a loaded checkpoint
        linear.weight.data = np.asfortranarray(linear.weight.data)
    decode_one_at_a_time(model, tokens, prefill=3)
    assert len(probes) == 2
