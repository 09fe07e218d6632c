"""The chat engine: a history that fits the context, and replies streamed as they are written.

The prompt layout comes from `gpt.chat.templates`. The `ChatEngine` owns a model, its tokenizer
and a turn-taking lock: one generation runs at a time, so two requests never share the CPU (or
a cache) half each.

A prompt is encoded from the template's parts: each control token (``<|im_start|>``) becomes its
id, and the text between two of them, the messages included, is encoded with special-token text
read as plain text. The ids are then those of the model's own tokenizer on the rendered prompt
(which also cuts the text at every special token), except that a user who types "<|im_end|>"
gets the characters, not the token. A reply ends at any of `stop_tokens()`: <|endoftext|>, the
checkpoint's eos_token_id (generation_config.json) and the template's end of turn.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from gpt.chat.templates import (BEGIN_OF_TEXT, ChatError, ControlToken, TemplateOptions, chat_template_for,
                                check_messages, get_template, read_generation_config,
                                stop_token_ids)
from gpt.core.generate import SamplingParams, generate_tokens, stream_text
from gpt.core.model import GPT
from gpt.io.checkpoint import (CheckpointError, load_pretrained, load_tokenizer_from,
                               resolve_checkpoint)


class PromptTooLong(ChatError):
    """The prompt cannot fit into the model's context, even with all history dropped."""


class EngineBusy(RuntimeError):
    """Too many requests are already waiting for the model."""


# ----------------------------------------------------------------------------------------------
# One reply being generated


class Generation:
    """An iterator of text pieces, each yielded as soon as it decodes to whole characters.

    When it is exhausted (or closed), `text`, `completion_tokens` and `finish_reason` tell how
    it went: "stop" (a stop token or stop string), "length" (max_new_tokens reached) or
    "cancelled" (`should_stop` said so, e.g. the client went away, or it was closed early).
    """

    def __init__(self, engine: "ChatEngine", prompt_ids: Sequence[int], params: SamplingParams,
                 stop_strings: Sequence[str] = (),
                 should_stop: Callable[[], bool] | None = None):
        self.engine = engine
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.stop_strings = tuple(s for s in stop_strings if s)
        self._should_stop = should_stop
        self.pieces: list[str] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._cancelled = False
        self._exhausted = False
        self.dropped_messages = 0              # history left out to fit the context (chat)
        self._iterator = self._run()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def __next__(self) -> str:
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    def read(self) -> str:
        """Run to the end and return the whole text."""
        for _ in self._iterator:
            pass
        return self.text

    def _stop_requested(self) -> bool:
        if self._should_stop is not None and self._should_stop():
            self._cancelled = True
        return self._cancelled

    def _counted_tokens(self) -> Iterator[int]:
        tokens = generate_tokens(self.engine.model, self.prompt_ids, self.params,
                                 should_stop=self._stop_requested)
        try:
            for token in tokens:
                self.completion_tokens += 1
                self.engine.tokens_generated += 1
                yield token
            self._exhausted = True
        finally:
            tokens.close()

    def _run(self) -> Iterator[str]:
        try:
            for piece in stream_text(self.engine.tokenizer, self._counted_tokens(),
                                     self.stop_strings):
                self.pieces.append(piece)
                yield piece
        except GeneratorExit:                  # our reader closed us before the end
            self._cancelled = True
            raise
        finally:
            if self._cancelled:
                self.finish_reason = "cancelled"
            elif not self._exhausted:
                self.finish_reason = "stop"            # stream_text met a stop string
            elif self.completion_tokens >= self.params.max_new_tokens:
                self.finish_reason = "length"
            else:
                self.finish_reason = "stop"            # a stop token


# ----------------------------------------------------------------------------------------------
# The engine: model + tokenizer + template + one-at-a-time turns


class ChatEngine:
    """A model ready to chat: turns text and conversations into token ids, trims history to
    fit the context, and streams replies. `turn()` serialises generations across threads.

    options: the template's settings (Qwen3's enable_thinking, Llama 3's date) for every
    conversation. stop_ids: token ids that end a reply besides <|endoftext|> and the template's
    end of turn (a checkpoint's eos_token_id). sampling_defaults: the checkpoint's recommended
    temperature / top_k / top_p (generation_config.json); chat.py samples with them where its
    command line says nothing.
    """

    def __init__(self, model: GPT, tokenizer, template: str = "base", name: str = "model",
                 max_waiting: int = 8, *, options: TemplateOptions | None = None,
                 stop_ids: Sequence[int] = (),
                 sampling_defaults: Mapping[str, float] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.options = options or TemplateOptions()
        self.sampling_defaults = dict(sampling_defaults or {})
        self.name = name
        self.max_waiting = max_waiting
        self.created = int(time.time())
        self.tokens_generated = 0              # over the engine's life (tests and stats read it)
        self._encode_lock = threading.Lock()  # the BPE chunk cache is not safe to share
        self._condition = threading.Condition()
        self._busy = False
        self._waiting = 0
        model.eval()
        if tokenizer.vocab_size > model.config.vocab_size:
            raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the "
                                  f"model only {model.config.vocab_size}")
        specials = tokenizer.special_tokens
        missing = [t for t in self.template.control_tokens if t not in specials]
        if missing:
            raise ChatError(f"the {self.template.name!r} chat template writes "
                            f"{', '.join(missing)}, which this tokenizer does not have as "
                            f"special tokens; choose another template")
        self._control_ids = {t: specials[t] for t in self.template.control_tokens}
        self._bos_id = specials.get(str(BEGIN_OF_TEXT))
        for i in stop_ids:
            if not 0 <= i < tokenizer.vocab_size:
                raise CheckpointError(f"stop token id {i} is not in this tokenizer's "
                                      f"0..{tokenizer.vocab_size - 1}")
        template_stops = [self._control_ids[t] for t in self.template.stop_tokens]
        self._stop_ids = tuple(dict.fromkeys(
            ([self.eot_id] if self.eot_id is not None else []) + list(stop_ids)
            + template_stops))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, template: str | None = None,
                        **kwargs: Any) -> "ChatEngine":
        """Load a checkpoint (ours, a run directory, a Hugging Face GPT-2, Llama or Qwen3
        directory, or an ORG/NAME downloaded with `python -m gpt.download`) with its
        tokenizer. The template is the checkpoint's own unless `template` is given; replies
        also stop at its eos_token_id, and its generation_config.json gives the sampling
        defaults."""
        directory = resolve_checkpoint(path)
        tokenizer = load_tokenizer_from(directory)
        if tokenizer is None:
            raise CheckpointError(f"{directory} holds no tokenizer (tokenizer.du.json, GPT-2's "
                                  f"vocab.json + merges.txt, or a Hugging Face tokenizer.json "
                                  f"or tokenizer.model)")
        template = template or chat_template_for(directory)
        get_template(template)                 # an unknown name fails before the model loads
        model = load_pretrained(directory)
        name = kwargs.pop("name", None) or _model_name(Path(path), directory)
        kwargs.setdefault("stop_ids", stop_token_ids(directory))
        kwargs.setdefault("sampling_defaults", sampling_defaults(directory))
        return cls(model, tokenizer, template, name=name, **kwargs)

    # -- turns ---------------------------------------------------------------------------------

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the model for one generation. Waits while another runs; raises EngineBusy if
        `max_waiting` requests are already waiting (the server answers 429)."""
        with self._condition:
            if self._busy and self._waiting >= self.max_waiting:
                raise EngineBusy(f"the model is busy and {self._waiting} requests are waiting; "
                                 f"try again shortly")
            self._waiting += 1
            try:
                while self._busy:
                    self._condition.wait()
            finally:
                self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._condition:
                self._busy = False
                self._condition.notify()

    # -- tokens --------------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self.model.config.block_size

    @property
    def eot_id(self) -> int | None:
        return getattr(self.tokenizer, "eot_id", None)

    @property
    def bos_id(self) -> int | None:
        """Llama 3's <|begin_of_text|>: its tokenizer puts it before every text the model
        reads, so a plain prompt gets it too (other tokenizers add nothing)."""
        return self._bos_id

    def encode(self, text: str) -> list[int]:
        """User text to ids. Special-token text such as "<|endoftext|>" stays plain text: a
        user cannot end the document or forge a turn by typing it."""
        try:
            with self._encode_lock:
                return self.tokenizer.encode(text, allowed_special="none")
        except ValueError as error:           # e.g. a character a char tokenizer never saw
            raise ChatError(f"cannot encode the prompt: {error}") from None

    def encode_parts(self, parts: Sequence[str]) -> list[int]:
        """A template's parts to ids: control tokens as their ids, the text between them (the
        template's and the messages' together, as one text) through `encode`."""
        ids: list[int] = []
        text: list[str] = []
        for part in parts:
            if isinstance(part, ControlToken):
                if text:
                    ids += self.encode("".join(text))
                    text = []
                ids.append(self._control_ids[part])
            else:
                text.append(part)
        if text:
            ids += self.encode("".join(text))
        return ids

    def prompt_ids(self, text: str, start_with_eot: bool = False) -> list[int]:
        """A plain prompt's ids, after <|begin_of_text|> (Llama 3), or after <|endoftext|>
        when `start_with_eot` or the text is empty."""
        ids = self.encode(text)
        if self.bos_id is not None:
            return [self.bos_id] + ids
        if (start_with_eot or not ids) and self.eot_id is not None:
            ids = [self.eot_id] + ids
        if not ids:
            raise ChatError("the prompt is empty (and this tokenizer has no <|endoftext|> "
                            "token to start from)")
        return ids

    def template_ids(self, messages: Sequence[Mapping[str, str]],
                     options: TemplateOptions | None = None) -> list[int]:
        """The ids of `messages` in this engine's template, ready for the reply."""
        template = self.template
        parts = template.parts(messages, options or self.options)
        if not template.control_tokens:        # our own templates: one text
            return self.prompt_ids("".join(parts), template.start_with_eot)
        return self.encode_parts(parts)

    def stop_tokens(self) -> tuple[int, ...]:
        """The ids that end a reply: <|endoftext|>, the checkpoint's eos_token_id, and the
        template's end of turn (<|im_end|>, <|eot_id|>)."""
        return self._stop_ids

    def check_prompt_length(self, ids: Sequence[int]) -> None:
        if len(ids) > self.context_length:
            raise PromptTooLong(f"the prompt is {len(ids)} tokens, longer than this model's "
                                f"context of {self.context_length} tokens")

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], max_new_tokens: int,
                    options: TemplateOptions | None = None) -> tuple[list[int], int]:
        """Token ids of the conversation in this engine's template, and how many messages were
        dropped to fit.

        The reply needs room too: the prompt may use the context minus
        min(max_new_tokens, context / 4); past that the oldest exchanges (never the system
        message, never the last message) are dropped. Generation itself copes with running
        past the context, so this reserve only keeps the start of the reply well-informed.
        """
        template = self.template
        messages = list(messages)
        reserve = max(1, min(max_new_tokens, self.context_length // 4))
        budget = self.context_length - reserve
        dropped = 0
        while True:
            ids = self.template_ids(messages, options)
            if len(ids) <= budget:
                return ids, dropped
            first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
            if first is None or first >= len(messages) - 1:
                break
            # Drop the oldest exchange: the message and everything up to the next user message.
            end = first + 1
            while end < len(messages) - 1 and messages[end]["role"] != "user":
                end += 1
            dropped += end - first
            del messages[first:end]
        if len(ids) <= self.context_length:    # the last message alone: let it use the reserve
            return ids, dropped
        raise PromptTooLong(f"the message is {len(ids)} tokens in the {template.name!r} "
                            f"template, longer than this model's context of "
                            f"{self.context_length} tokens; shorten it")

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams,
                 stop_strings: Sequence[str] = (),
                 should_stop: Callable[[], bool] | None = None) -> Generation:
        """Continue `prompt_ids`; stop at <|endoftext|>, any of `stop_strings`, or
        `params.max_new_tokens`. Call inside `turn()` when threads share the engine."""
        self.check_prompt_length(prompt_ids)
        params = replace(params, stop_tokens=tuple(params.stop_tokens) + self.stop_tokens(),
                         vocab_size=self.tokenizer.vocab_size)
        return Generation(self, prompt_ids, params, stop_strings, should_stop)

    def chat(self, messages: Sequence[Mapping[str, str]], params: SamplingParams,
             stop_strings: Sequence[str] = (),
             should_stop: Callable[[], bool] | None = None,
             options: TemplateOptions | None = None) -> Generation:
        """The assistant's reply to a conversation (see `chat_prompt` for the trimming)."""
        ids, dropped = self.chat_prompt(check_messages(list(messages)), params.max_new_tokens,
                                        options)
        generation = self.generate(ids, params,
                                   tuple(stop_strings) + self.template.stop_strings, should_stop)
        generation.dropped_messages = dropped
        return generation


def sampling_defaults(checkpoint: str | os.PathLike) -> dict[str, float]:
    """The sampling a checkpoint's authors recommend, from its generation_config.json:
    temperature, top_k, top_p where given; temperature 0 (greedy) if do_sample is false."""
    values = read_generation_config(checkpoint)
    if values.get("do_sample") is False:
        return {"temperature": 0.0}
    return {key: values[key] for key in ("temperature", "top_k", "top_p")
            if isinstance(values.get(key), (int, float)) and not isinstance(values[key], bool)}


def _model_name(given: Path, directory: Path) -> str:
    """A readable model id: the run directory's name rather than "best" or "latest"."""
    if directory.name in ("best", "latest", "best.old", "latest.old"):
        return directory.parent.name
    return directory.name or str(given)


# ----------------------------------------------------------------------------------------------
# A conversation with history (the terminal chat)


@dataclass
class ChatSession:
    """A conversation with one engine: keeps the history, applies the sampling settings.

    `send(text)` streams the reply; when it ends (or is interrupted) the exchange joins the
    history, trimmed like any conversation to fit the context next time.
    """
    engine: ChatEngine
    params: SamplingParams = field(default_factory=lambda: SamplingParams(
        max_new_tokens=200, temperature=0.8, top_k=50))
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.history.clear()

    def messages_for(self, text: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": text}]

    def send(self, text: str) -> Iterator[str]:
        """Stream the reply to `text`. ChatError if it cannot be encoded or does not fit."""
        generation = self.engine.chat(self.messages_for(text), self.params)
        return self._stream(text, generation)

    def _stream(self, text: str, generation: Generation) -> Iterator[str]:
        try:
            yield from generation
        finally:
            generation.close()
            # What did not fit this time will never fit again: forget it (bounded memory).
            del self.history[:generation.dropped_messages]
            self.history += [{"role": "user", "content": text},
                             {"role": "assistant", "content": generation.text}]
