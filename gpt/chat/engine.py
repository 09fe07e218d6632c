"""Chat: prompt templates, a history that fits the context, and the engine that streams replies.

A language model only ever continues text. "Chatting" with it means writing the conversation
down as text in the layout the model was trained on, and letting it continue from the point
where the assistant's reply should begin. All of that formatting lives here, in one place, so
the terminal chat, the HTTP server and the fine-tuning code agree on it.

Two templates:

- ``"alpaca"``, for instruction-tuned checkpoints (the layout of chapter 7 of *Build a Large
  Language Model (From Scratch)*)::

      Below is an instruction that describes a task. Write a response that appropriately
      completes the request.

      ### Instruction:
      {instruction}

      ### Response:
      {the model writes here}

  Later turns of a conversation repeat the ``### Instruction:`` / ``### Response:`` pair.
  A system message, if any, replaces the first paragraph.

- ``"base"``, for pretrained-only models (trained on TinyStories, say): no roles at all. The
  user's text is the start of a document and the model continues it. The prompt begins with
  ``<|endoftext|>`` when the tokenizer has it, which is what every document in training followed.

A checkpoint records its template in config.json under ``deep_understanding_chat_template``
(see `chat_template_for` and `set_chat_template`); without it a checkpoint is ``"base"``.

The `ChatEngine` owns a model, its tokenizer and a turn-taking lock: one generation runs at a
time, so two requests never share the CPU (or a cache) half each.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from gpt.core.generate import SamplingParams, generate_tokens, stream_text
from gpt.core.model import GPT
from gpt.errors import GPTError
from gpt.io.checkpoint import (CONFIG_FILE, STATE_FILE, CheckpointError, load_pretrained,
                               load_tokenizer_from, resolve_checkpoint)
from gpt.io.files import atomic_write

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
TEMPLATE_KEY = "deep_understanding_chat_template"      # in a checkpoint's config.json
ROLES = ("system", "user", "assistant")


class ChatError(GPTError, ValueError):
    """Bad chat input: an unknown role or template, a prompt that cannot fit, text the
    tokenizer cannot encode. The message is meant for the person who sent it."""


class PromptTooLong(ChatError):
    """The prompt cannot fit into the model's context, even with all history dropped."""


class EngineBusy(RuntimeError):
    """Too many requests are already waiting for the model."""


# ----------------------------------------------------------------------------------------------
# Templates


def format_alpaca(instruction: str, input: str = "", preamble: str = ALPACA_PREAMBLE) -> str:
    """One Alpaca-style prompt, ending where the response begins (exactly the book's layout).

    >>> format_alpaca("Name a colour.").endswith("### Instruction:\\nName a colour.\\n\\n### Response:\\n")
    True
    """
    text = f"{preamble}\n\n### Instruction:\n{instruction}"
    if input:
        text += f"\n\n### Input:\n{input}"
    return text + "\n\n### Response:\n"


def _merged(messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(role, content) pairs with consecutive messages of one role joined by a newline, so that
    the conversation alternates and the templates need not handle runs."""
    out: list[tuple[str, str]] = []
    for m in messages:
        role, content = m["role"], m["content"]
        if out and out[-1][0] == role:
            out[-1] = (role, out[-1][1] + "\n" + content)
        else:
            out.append((role, content))
    return out


def _render_base(messages: Sequence[Mapping[str, str]]) -> str:
    # No roles: a document. A reply continues the text right where the user's stopped; the
    # next user message starts on a new line, as when the user pressed Enter.
    text = ""
    for role, content in _merged(messages):
        if role != "assistant" and text and not text.endswith("\n"):
            text += "\n"
        text += content
    return text


def _render_alpaca(messages: Sequence[Mapping[str, str]]) -> str:
    turns = _merged(messages)
    preamble = ALPACA_PREAMBLE
    if turns and turns[0][0] == "system":
        preamble = turns.pop(0)[1]
    blocks = [preamble]
    for role, content in turns:
        if role == "assistant":
            if len(blocks) == 1:              # a reply with no instruction: plain text
                blocks.append(content)
            else:
                blocks[-1] += content          # the response written after its header
        else:                                  # user (or a later system message)
            blocks.append(f"### Instruction:\n{content}\n\n### Response:\n")
    return "\n\n".join(blocks)


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes a prompt, and where a reply ends.

    name: "base" or "alpaca". render(messages) -> prompt text. stop_strings: text that ends a
    reply (the model starting the next turn by itself). start_with_eot: put <|endoftext|> first.
    """
    name: str
    render: Callable[[Sequence[Mapping[str, str]]], str]
    stop_strings: tuple[str, ...] = ()
    start_with_eot: bool = False


TEMPLATES: dict[str, ChatTemplate] = {
    "base": ChatTemplate("base", _render_base, (), start_with_eot=True),
    # A small model often starts the next "### Instruction:" itself instead of stopping.
    # "\n\n###" is listed so that the blank line before that header is not shown either.
    "alpaca": ChatTemplate("alpaca", _render_alpaca, ("\n\n###", "\n###", "###")),
}


def get_template(name: str) -> ChatTemplate:
    """The template called `name` ("base" or "alpaca"); a ChatError names the choices."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ChatError(f"unknown chat template {name!r}; known: "
                        f"{', '.join(TEMPLATES)}") from None


def chat_template_for(checkpoint: str | os.PathLike) -> str:
    """The chat template a checkpoint was trained for: "alpaca" or "base" (the default).

    Where it is recorded (the first found wins), in the checkpoint directory (a run directory
    means its best/ or latest/ checkpoint):
      1. config.json, top-level key ``"deep_understanding_chat_template": "alpaca"``
         (Hugging Face's loader ignores keys it does not know);
      2. train_state.json, key ``"chat_template"``.
    `gpt.finetune.instruct` writes the second when it saves; `set_chat_template(directory, "alpaca")`
    writes the first, for any other checkpoint.
    """
    directory = resolve_checkpoint(checkpoint)
    for filename, key in ((CONFIG_FILE, TEMPLATE_KEY), (STATE_FILE, "chat_template")):
        path = directory / filename
        if not path.is_file():
            continue
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not valid JSON: {error}") from None
        if isinstance(values, dict) and values.get(key) is not None:
            name = values[key]
            if name not in TEMPLATES:
                raise CheckpointError(f"{path}: {key} is {name!r}; known chat templates: "
                                      f"{', '.join(TEMPLATES)}")
            return name
    return "base"


def set_chat_template(checkpoint: str | os.PathLike, name: str) -> None:
    """Record in a checkpoint's config.json which chat template it expects (atomically)."""
    get_template(name)
    directory = resolve_checkpoint(checkpoint)
    path = directory / CONFIG_FILE
    values = json.loads(path.read_text(encoding="utf-8"))
    values[TEMPLATE_KEY] = name
    with atomic_write(path) as f:
        f.write((json.dumps(values, indent=2) + "\n").encode("utf-8"))


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Validate a chat history: a non-empty list of {"role", "content"} with known roles and
    string content. Returns clean copies; raises ChatError saying what is wrong and where."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatError(f"messages[{i}].role must be one of {', '.join(ROLES)}; "
                            f"got {role!r}")
        if isinstance(content, list):         # OpenAI's content parts: keep the text ones
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text"
                        and isinstance(part.get("text"), str)):
                    raise ChatError(f"messages[{i}].content[{j}]: only text parts "
                                    f"({{\"type\": \"text\", \"text\": ...}}) are supported")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ChatError(f"messages[{i}].content must be a string")
        clean.append({"role": role, "content": content})
    return clean


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
    fit the context, and streams replies. `turn()` serialises generations across threads."""

    def __init__(self, model: GPT, tokenizer, template: str = "base", name: str = "model",
                 max_waiting: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.template = get_template(template)
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

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, template: str | None = None,
                        **kwargs: Any) -> "ChatEngine":
        """Load a checkpoint (ours, a run directory, or a Hugging Face GPT-2 directory) with
        its tokenizer; the template is the checkpoint's own unless `template` is given."""
        directory = resolve_checkpoint(path)
        tokenizer = load_tokenizer_from(directory)
        if tokenizer is None:
            raise CheckpointError(f"{directory} holds no tokenizer (tokenizer.du.json, or "
                                  f"GPT-2's vocab.json + merges.txt)")
        model = load_pretrained(directory)
        name = kwargs.pop("name", None) or _model_name(Path(path), directory)
        return cls(model, tokenizer, template or chat_template_for(directory), name=name,
                   **kwargs)

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

    def encode(self, text: str) -> list[int]:
        """User text to ids. Special-token text such as "<|endoftext|>" stays plain text: a
        user cannot end the document or forge a turn by typing it."""
        try:
            with self._encode_lock:
                return self.tokenizer.encode(text, allowed_special="none")
        except ValueError as error:           # e.g. a character a char tokenizer never saw
            raise ChatError(f"cannot encode the prompt: {error}") from None

    def prompt_ids(self, text: str, start_with_eot: bool = False) -> list[int]:
        ids = self.encode(text)
        if (start_with_eot or not ids) and self.eot_id is not None:
            ids = [self.eot_id] + ids
        if not ids:
            raise ChatError("the prompt is empty (and this tokenizer has no <|endoftext|> "
                            "token to start from)")
        return ids

    def stop_tokens(self) -> tuple[int, ...]:
        return (self.eot_id,) if self.eot_id is not None else ()

    def check_prompt_length(self, ids: Sequence[int]) -> None:
        if len(ids) > self.context_length:
            raise PromptTooLong(f"the prompt is {len(ids)} tokens, longer than this model's "
                                f"context of {self.context_length} tokens")

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], max_new_tokens: int
                    ) -> tuple[list[int], int]:
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
            ids = self.prompt_ids(template.render(messages), template.start_with_eot)
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
             should_stop: Callable[[], bool] | None = None) -> Generation:
        """The assistant's reply to a conversation (see `chat_prompt` for the trimming)."""
        ids, dropped = self.chat_prompt(check_messages(list(messages)), params.max_new_tokens)
        generation = self.generate(ids, params,
                                   tuple(stop_strings) + self.template.stop_strings, should_stop)
        generation.dropped_messages = dropped
        return generation


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
