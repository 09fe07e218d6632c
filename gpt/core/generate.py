"""Text generation: KV-cached decoding, sampling (temperature, top-k, top-p, repetition
penalty), stop tokens and stop strings, and a streaming iterator of text.

How a language model (GPT or Llama) writes: it reads the prompt and gives a distribution over
the next token; we pick one, append it, and ask again. Without a cache each step would re-run
the whole context through the model. With a KV cache the prompt is run once ("prefill") and
every later step feeds only the newest token ("decode"), reusing the keys and values already
computed for the past.
"""
from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from autograd import no_grad
from gpt.core.llama import Llama
from gpt.core.model import GPT

# Either family: both take (idx, kv_cache, last_only), make caches with new_kv_cache(), and
# have config.block_size and config.vocab_size, which is all generation uses.
LanguageModel = GPT | Llama


# The most tokens one chat reply may ask for (chat.py and the server's default cap): past the
# context, every new token costs a fresh prefill of the whole window, so an unbounded request
# could hold the model for hours.
MAX_NEW_TOKENS = 4096


@dataclass
class SamplingParams:
    """How to pick each next token.

    temperature: 0 is greedy (always the most likely token); 1 samples the model's distribution;
    lower is more conservative. top_k: sample among the k most likely tokens only. top_p
    (nucleus): among the fewest tokens whose probabilities add up to at least p.
    repetition_penalty > 1 makes tokens already in the context less likely (CTRL's rule:
    a positive logit is divided by it, a negative one multiplied). stop_tokens end generation
    (the stop token itself is not returned). seed makes sampling repeatable. vocab_size:
    sample only ids below it, for a model whose output layer is padded beyond its tokenizer's
    vocabulary (ids the tokenizer cannot decode are never picked).
    """
    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop_tokens: Sequence[int] = field(default_factory=tuple)
    seed: int | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        # `not x >= 0` rather than `x < 0`: NaN fails every comparison and must fail here too.
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def sample_next(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                history: Sequence[int] = ()) -> int:
    """Pick the next token id from a (V,) row of logits.

    Greedy is an argmax of the logits as they are. Sampling computes probabilities only for
    the candidates: with top_k, the k most likely tokens, found by a partition (no sort of
    the vocabulary); with top_p, the nucleus, found among the most likely few (`_nucleus`).
    A vocabulary of 150k tokens would otherwise cost a sort and a float64 copy of the whole
    row at every step. The probabilities are float64: their sums run over many small terms.
    """
    if params.vocab_size is not None:
        logits = logits[:params.vocab_size]
    if params.repetition_penalty != 1.0 and len(history):
        seen = np.unique(np.asarray(history))
        seen = seen[seen < logits.size]
        logits = logits.copy()                        # the caller's row stays as it was
        picked = logits[seen]
        logits[seen] = np.where(picked > 0, picked / params.repetition_penalty,
                                picked * params.repetition_penalty)
    if params.temperature == 0:
        return int(np.argmax(logits))
    candidates = None                                 # token ids (ascending), or all of them
    if params.top_k is not None and params.top_k < logits.size:
        kth = np.partition(logits, -params.top_k)[-params.top_k]
        candidates = np.flatnonzero(logits >= kth)    # ties with the k-th are kept too
        logits = logits[candidates]
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p is not None and params.top_p < 1.0:
        keep = _nucleus(probs, params.top_p)
        candidates = keep if candidates is None else candidates[keep]
        probs = probs[keep]
    # Inverse-CDF sampling: one uniform number, one search.
    index = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
    index = min(index, probs.size - 1)
    return int(index if candidates is None else candidates[index])


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Positions (ascending) of the fewest most likely entries of `probs` whose sum reaches
    `top_p`: the m most likely are taken by a partition and sorted, with m growing eightfold
    until they hold `top_p`, so a peaked distribution never sorts the whole row."""
    m = 64
    while True:
        if m >= probs.size:
            top = np.argsort(-probs, kind="stable")                  # most likely first
        else:
            top = np.argpartition(-probs, m)[:m]
            top = top[np.argsort(-probs[top], kind="stable")]
        cumulative = np.cumsum(probs[top])
        if cumulative[-1] >= top_p or m >= probs.size:
            # every entry up to and including the one that crosses top_p
            n_keep = int(np.searchsorted(cumulative, top_p)) + 1
            return np.sort(top[:n_keep])
        m *= 8


def generate_tokens(model: LanguageModel, prompt_ids: Sequence[int],
                    params: SamplingParams | None = None, rng: np.random.Generator | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    on_logits: Callable[[np.ndarray], None] | None = None) -> Iterator[int]:
    """Yield new token ids one at a time (batch of one), with a KV cache.

    When the context fills up, generation carries on: the cache is rebuilt from the most recent
    three quarters of the context ("re-prefill") and decoding continues from there, so a long
    generation never crashes and never feeds the model positions it has no embedding for.
    `should_stop()` is polled before each token (a disconnected client, say).
    `on_logits(row)` sees each step's (V,) logits before sampling (to inspect or test them).
    """
    params = params or SamplingParams()
    rng = rng if rng is not None else np.random.default_rng(params.seed)
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ValueError("generate: the prompt is empty; give at least one token "
                         "(for a base model, e.g. the end-of-text token)")
    vocab = model.config.vocab_size
    if min(ids) < 0 or max(ids) >= vocab:
        raise ValueError(f"generate: prompt token ids must be in 0..{vocab - 1}")
    block = model.config.block_size
    keep = max(1, (3 * block) // 4)
    was_training = model.training
    model.eval()
    stop = set(int(t) for t in params.stop_tokens)
    try:
        with no_grad():
            cache = model.new_kv_cache(batch_size=1)
            window = ids[-block:]
            logits = model(np.array([window]), kv_cache=cache, last_only=True).data[0, -1]
            for _ in range(params.max_new_tokens):
                if should_stop is not None and should_stop():
                    return
                if on_logits is not None:
                    on_logits(logits)
                token = sample_next(logits, params, rng, ids)
                if token in stop:
                    return
                ids.append(token)
                yield token
                if cache.length >= block:           # full: re-prefill the recent window
                    cache.reset()
                    logits = model(np.array([ids[-keep:]]), kv_cache=cache,
                                   last_only=True).data[0, -1]
                else:
                    logits = model(np.array([[token]]), kv_cache=cache).data[0, -1]
    finally:
        model.train(was_training)


def generate(model: LanguageModel, prompt_ids: Sequence[int],
             params: SamplingParams | None = None, **overrides) -> list[int]:
    """The new token ids as a list. Keyword overrides set SamplingParams fields, e.g.
    generate(model, ids, max_new_tokens=50, temperature=0)."""
    params = params or SamplingParams()
    if overrides:
        params = SamplingParams(**{**params.__dict__, **overrides})
    return list(generate_tokens(model, prompt_ids, params))


def generate_uncached(model: LanguageModel, prompt_ids: Sequence[int], max_new_tokens: int,
                      on_logits: Callable[[np.ndarray], None] | None = None) -> list[int]:
    """Greedy decoding by re-running the whole context every step: the slow, obviously-correct
    reference that the cached path is tested against (`on_logits` as in generate_tokens)."""
    ids = list(prompt_ids)
    block = model.config.block_size
    model_was_training = model.training
    model.eval()
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                logits = model(np.array([ids[-block:]]), last_only=True).data[0, -1]
                if on_logits is not None:
                    on_logits(logits)
                ids.append(int(np.argmax(logits)))
    finally:
        model.train(model_was_training)
    return ids[len(prompt_ids):]


# ----------------------------------------------------------------------------------------------
# From tokens to text, as it is generated.


def stream_text(tokenizer, tokens: Iterable[int], stop_strings: Sequence[str] = ()
                ) -> Iterator[str]:
    """Turn a stream of token ids into a stream of text pieces.

    Byte-level tokens may split a character (an emoji is 4 bytes, perhaps 2 tokens), so bytes
    go through an incremental UTF-8 decoder that emits only complete characters. Text that could
    be the start of a stop string is held back until it is clear that it is not; when a stop
    string appears, the text before it is emitted and generation stops (closing the token
    iterator, which ends the model's work).
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = [s for s in stop_strings if s]
    pending = ""
    iterator = iter(tokens)
    try:
        for token in iterator:
            pending += decoder.decode(tokenizer.decode_bytes([token]))
            if stops:
                hit = min((pending.find(s) for s in stops if s in pending), default=-1)
                if hit >= 0:
                    if pending[:hit]:
                        yield pending[:hit]
                    return
                hold = _longest_stop_prefix_suffix(pending, stops)
                ready, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
            else:
                ready, pending = pending, ""
            if ready:
                yield ready
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _longest_stop_prefix_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
