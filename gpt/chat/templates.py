"""Chat templates: how a conversation is written down as the text a model continues.

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
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from gpt.errors import GPTError
from gpt.io.checkpoint import CONFIG_FILE, STATE_FILE, CheckpointError, resolve_checkpoint
from gpt.io.files import atomic_write

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
TEMPLATE_KEY = "deep_understanding_chat_template"      # in a checkpoint's config.json
ROLES = ("system", "user", "assistant")


class ChatError(GPTError, ValueError):
    """Bad chat input: an unknown role or template, a prompt that cannot fit, text the
    tokenizer cannot encode. The message is meant for the person who sent it."""


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
