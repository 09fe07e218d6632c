"""Chat templates: how a conversation is written down as the text a model continues.

A language model only ever continues text. "Chatting" with it means writing the conversation
down as text in the layout the model was trained on, and letting it continue from the point
where the assistant's reply should begin. All of that formatting lives here, in one place, so
the terminal chat, the HTTP server and the fine-tuning code agree on it.

Three templates for the models trained here:

- ``"chat"``, for the storyteller that ``python train.py`` makes (`gpt.finetune.stories`): each
  turn between its role's token and ``<|end|>``, after the ``<|endoftext|>`` that every document
  in pretraining followed::

      <|endoftext|><|user|>Tell me a story about a cat.<|end|><|assistant|>{the model writes here}

  The reply ends with ``<|end|>``. The three turn tokens are special tokens of the tokenizer
  pretraining trains (`CHAT_TOKENS`), written as their ids, so no text can forge them. An empty
  last message is an error (there is nothing to answer); a system message, which the
  storyteller was never trained with, is plain text before the first turn.

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

And four for open-weight chat models, each the model's own Jinja template (in its
tokenizer_config.json) written out in Python, so that the prompt is the same text, character
for character, as `transformers`' ``apply_chat_template(..., add_generation_prompt=True)``:

- ``"chatml"``: every message ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; the reply follows
  ``<|im_start|>assistant\\n`` and ends with ``<|im_end|>``.
- ``"smollm2"``: ChatML, with SmolLM2's own system message when the conversation has none.
- ``"qwen3"``: ChatML, and Qwen3's thinking. The model first writes its reasoning between
  ``<think>`` and ``</think>``, then the answer. Earlier replies go back into the prompt without
  their reasoning (only an assistant turn after the last user message keeps it). With
  ``enable_thinking=False`` the prompt ends with an empty ``<think>\\n\\n</think>\\n\\n``, so the
  model answers at once. ``/think`` and ``/no_think`` typed in a user message are the same switch
  per turn, read by the model itself: the template writes them as typed, as Qwen's does.
- ``"llama3"``: Llama 3.1/3.2's headers, ``<|start_header_id|>{role}<|end_header_id|>\\n\\n
  {content}<|eot_id|>``, after ``<|begin_of_text|>`` and a system header that always carries
  ``Cutting Knowledge Date: December 2023`` and ``Today Date: {date}`` (the date an option; today
  by default, as transformers does).

A rendered prompt is a list of *parts*: text, and `ControlToken`s such as ``<|im_start|>``. The
engine writes each control token as its id and encodes the text between them with special
tokens read as plain text, so nothing a user types can become one: "<|im_end|>" typed in a
message is nine ordinary tokens, not the end of the turn.

Which template a checkpoint uses (`chat_template_for`): the one recorded in its config.json under
``deep_understanding_chat_template`` (see `set_chat_template`) or its train_state.json; else the
one its Hugging Face files ship (tokenizer_config.json's ``chat_template``, chat_template.jinja),
recognised by its tokens; else ``"base"``. Where a reply ends (`stop_token_ids`): the template's
end-of-turn token, and the ``eos_token_id`` of generation_config.json.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from gpt.errors import GPTError
from gpt.io.checkpoint import CONFIG_FILE, STATE_FILE, CheckpointError, resolve_checkpoint
from gpt.io.files import atomic_write

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
TEMPLATE_KEY = "deep_understanding_chat_template"      # in a checkpoint's config.json
ROLES = ("system", "user", "assistant")
GENERATION_CONFIG_FILE = "generation_config.json"
# Where a Hugging Face checkpoint keeps its Jinja chat template, in transformers' order.
HF_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LLAMA3_KNOWLEDGE_CUTOFF = "December 2023"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ChatError(GPTError, ValueError):
    """Bad chat input: an unknown role or template, a prompt that cannot fit, text the
    tokenizer cannot encode. The message is meant for the person who sent it."""


class ControlToken(str):
    """A part of a rendered prompt that is one of the template's own tokens (``<|im_start|>``):
    the engine writes its id. Text, the user's above all, is never read as one."""

    def __repr__(self) -> str:
        return f"ControlToken({str(self)!r})"


IM_START, IM_END = ControlToken("<|im_start|>"), ControlToken("<|im_end|>")
BEGIN_OF_TEXT = ControlToken("<|begin_of_text|>")
START_HEADER, END_HEADER = ControlToken("<|start_header_id|>"), ControlToken("<|end_header_id|>")
EOT_ID = ControlToken("<|eot_id|>")
ENDOFTEXT = ControlToken("<|endoftext|>")
USER, ASSISTANT = ControlToken("<|user|>"), ControlToken("<|assistant|>")
END = ControlToken("<|end|>")
# The turn tokens of the "chat" template, which the pretraining tokenizer has as special tokens.
CHAT_TOKENS = (str(USER), str(ASSISTANT), str(END))


@dataclass(frozen=True)
class TemplateOptions:
    """The settings a template may take besides the messages (the others ignore them).

    enable_thinking: Qwen3 reasons before answering (False: the prompt closes an empty
    <think> block for it). date: Llama 3's "Today Date" (None: today).
    """
    enable_thinking: bool = True
    date: datetime.date | None = None


# ----------------------------------------------------------------------------------------------
# The templates of the models trained here


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


def _write_base(messages: Sequence[Mapping[str, str]], options: TemplateOptions) -> list[str]:
    # No roles: a document. A reply continues the text right where the user's stopped; the
    # next user message starts on a new line, as when the user pressed Enter.
    text = ""
    for role, content in _merged(messages):
        if role != "assistant" and text and not text.endswith("\n"):
            text += "\n"
        text += content
    return [text]


def _write_alpaca(messages: Sequence[Mapping[str, str]], options: TemplateOptions) -> list[str]:
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
    return ["\n\n".join(blocks)]


def _write_chat(messages: Sequence[Mapping[str, str]], options: TemplateOptions) -> list[str]:
    turns = _merged(messages)
    if turns and turns[-1][0] == "user" and not turns[-1][1].strip():
        raise ChatError("the message is empty: say what story you would like")
    parts: list[str] = [ENDOFTEXT]
    if turns and turns[0][0] == "system":
        parts.append(turns.pop(0)[1] + "\n\n")
    for role, content in turns:              # a later system message speaks as the user
        parts += [ASSISTANT if role == "assistant" else USER, content, END]
    return parts + [ASSISTANT]


# ----------------------------------------------------------------------------------------------
# The templates of open-weight chat models, as their own Jinja templates write them.
# Messages are written as given: these templates do not merge runs of one role.


def _chatml_message(role: str, content: str) -> list[str]:
    return [IM_START, f"{role}\n{content}", IM_END, "\n"]


def _write_chatml(messages: Sequence[Mapping[str, str]], options: TemplateOptions,
                  default_system: str | None = None) -> list[str]:
    parts: list[str] = []
    if default_system is not None and messages and messages[0]["role"] != "system":
        parts += _chatml_message("system", default_system)
    for m in messages:
        parts += _chatml_message(m["role"], m["content"])
    return parts + [IM_START, "assistant\n"]


def _write_smollm2(messages: Sequence[Mapping[str, str]], options: TemplateOptions) -> list[str]:
    return _write_chatml(messages, options, default_system=SMOLLM2_SYSTEM)


def _qwen3_last_query(messages: Sequence[Mapping[str, str]]) -> int:
    """The index of the last user message that is not a tool's answer (its template's
    `last_query_index`): replies after it are this turn's, and keep their reasoning."""
    for index in range(len(messages) - 1, -1, -1):
        m = messages[index]
        content = m["content"]
        if m["role"] == "user" and not (content.startswith("<tool_response>")
                                        and content.endswith("</tool_response>")):
            return index
    return len(messages) - 1


def _write_qwen3(messages: Sequence[Mapping[str, str]], options: TemplateOptions) -> list[str]:
    parts: list[str] = []
    if messages and messages[0]["role"] == "system":
        parts += _chatml_message("system", messages[0]["content"])
    last_query = _qwen3_last_query(messages)
    for index, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "user" or (role == "system" and index > 0):
            parts += _chatml_message(role, content)
        elif role == "assistant":
            # A reply is stored with its reasoning; the template takes the two apart...
            reasoning = ""
            if "</think>" in content:
                reasoning = content.split("</think>")[0].rstrip("\n")
                reasoning = reasoning.split("<think>")[-1].lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
            # ...and shows the reasoning only for replies after the last question.
            is_last = index == len(messages) - 1
            if index > last_query and (is_last or reasoning):
                reasoning, content = reasoning.strip("\n"), content.lstrip("\n")
                content = f"<think>\n{reasoning}\n</think>\n\n{content}"
            parts += _chatml_message("assistant", content)
    parts += [IM_START, "assistant\n"]
    if not options.enable_thinking:
        # <think> is an ordinary token of Qwen3's vocabulary (not a special one), so it is text.
        parts.append("<think>\n\n</think>\n\n")
    return parts


def llama3_date(day: datetime.date | None = None) -> str:
    """A date as Llama 3's template writes it, strftime's "%d %b %Y" in English: 05 Dec 2026."""
    day = day or datetime.date.today()
    return f"{day.day:02d} {_MONTHS[day.month - 1]} {day.year}"


def _write_llama3(messages: Sequence[Mapping[str, str]], options: TemplateOptions) -> list[str]:
    system = ""
    if messages and messages[0]["role"] == "system":       # Jinja's `trim` is str.strip()
        system, messages = messages[0]["content"].strip(), messages[1:]
    parts: list[str] = [
        BEGIN_OF_TEXT, START_HEADER, "system", END_HEADER,
        f"\n\nCutting Knowledge Date: {LLAMA3_KNOWLEDGE_CUTOFF}\n"
        f"Today Date: {llama3_date(options.date)}\n\n{system}", EOT_ID]
    for m in messages:
        parts += [START_HEADER, m["role"], END_HEADER, "\n\n" + m["content"].strip(), EOT_ID]
    return parts + [START_HEADER, "assistant", END_HEADER, "\n\n"]


# ----------------------------------------------------------------------------------------------
# The template registry


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes a prompt, and where a reply ends.

    name: the registry's key. write(messages, options) -> the prompt's parts (text and
    ControlTokens); `parts` and `render` call it. stop_strings: text that ends a reply (the
    model starting the next turn by itself). start_with_eot: put <|endoftext|> first.
    stop_tokens: the control tokens that end a reply (<|im_end|>). control_tokens: every
    control token the template writes (a tokenizer must have them all). thinking: replies may
    begin with <think>...</think> (Qwen3).
    """
    name: str
    write: Callable[[Sequence[Mapping[str, str]], TemplateOptions], list[str]]
    stop_strings: tuple[str, ...] = ()
    start_with_eot: bool = False
    stop_tokens: tuple[ControlToken, ...] = ()
    control_tokens: tuple[ControlToken, ...] = ()
    thinking: bool = False

    def parts(self, messages: Sequence[Mapping[str, str]],
              options: TemplateOptions | None = None) -> list[str]:
        """The prompt for `messages`, ending where the assistant's reply begins, as parts."""
        return self.write(list(messages), options or TemplateOptions())

    def render(self, messages: Sequence[Mapping[str, str]],
               options: TemplateOptions | None = None) -> str:
        """The prompt as one text (control tokens spelled out)."""
        return "".join(self.parts(messages, options))


_CHATML = dict(stop_tokens=(IM_END,), control_tokens=(IM_START, IM_END))

TEMPLATES: dict[str, ChatTemplate] = {
    "base": ChatTemplate("base", _write_base, (), start_with_eot=True),
    # A small model often starts the next "### Instruction:" itself instead of stopping.
    # "\n\n###" is listed so that the blank line before that header is not shown either.
    "alpaca": ChatTemplate("alpaca", _write_alpaca, ("\n\n###", "\n###", "###")),
    "chatml": ChatTemplate("chatml", _write_chatml, **_CHATML),
    "smollm2": ChatTemplate("smollm2", _write_smollm2, **_CHATML),
    "qwen3": ChatTemplate("qwen3", _write_qwen3, thinking=True, **_CHATML),
    "llama3": ChatTemplate("llama3", _write_llama3, stop_tokens=(EOT_ID,),
                           control_tokens=(BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT_ID)),
    "chat": ChatTemplate("chat", _write_chat, stop_tokens=(END,),
                         control_tokens=(ENDOFTEXT, USER, ASSISTANT, END)),
}


def get_template(name: str) -> ChatTemplate:
    """The template called `name` (see TEMPLATES); a ChatError names the choices."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ChatError(f"unknown chat template {name!r}; known: "
                        f"{', '.join(TEMPLATES)}") from None


# ----------------------------------------------------------------------------------------------
# Which template a checkpoint uses, and where its replies end


def chat_template_for(checkpoint: str | os.PathLike) -> str:
    """The chat template a checkpoint expects: a name in TEMPLATES, "base" by default.

    Where it is found (the first wins), in the checkpoint directory (a run directory means its
    best/ or latest/ checkpoint):
      1. config.json, top-level key ``"deep_understanding_chat_template": "alpaca"``
         (Hugging Face's loader ignores keys it does not know);
      2. train_state.json, key ``"chat_template"``;
      3. the Jinja template a Hugging Face checkpoint ships (see `hf_chat_template`),
         recognised by `identify_hf_template`; one not written here is a CheckpointError.
    `gpt.finetune.instruct` writes the second when it saves; `set_chat_template(directory, name)`
    writes the first, for any other checkpoint.
    """
    directory = resolve_checkpoint(checkpoint)
    for filename, key in ((CONFIG_FILE, TEMPLATE_KEY), (STATE_FILE, "chat_template")):
        values = _read_json_object(directory / filename)
        if values.get(key) is not None:
            name = values[key]
            if name not in TEMPLATES:
                raise CheckpointError(f"{directory / filename}: {key} is {name!r}; known chat "
                                      f"templates: {', '.join(TEMPLATES)}")
            return name
    found = hf_chat_template(directory)
    if found is None:
        return "base"
    path, text = found
    name = identify_hf_template(text)
    if name is None:
        raise CheckpointError(f"{path}: its chat template is none of those written here "
                              f"(ChatML, SmolLM2's, Qwen3's, Llama 3.1's); choose one with "
                              f"--template ({', '.join(TEMPLATES)})")
    return name


def hf_chat_template(directory: str | os.PathLike) -> tuple[Path, str] | None:
    """The Jinja chat template a Hugging Face checkpoint ships, and the file it is in (None if
    there is none): chat_template.jinja, or the ``chat_template`` of chat_template.json or
    tokenizer_config.json (a string, or a list of named templates: the "default" one)."""
    directory = Path(directory)
    for filename in HF_TEMPLATE_FILES:
        path = directory / filename
        if not path.is_file():
            continue
        if path.suffix == ".jinja":
            return path, path.read_text(encoding="utf-8")
        template = _read_json_object(path).get("chat_template")
        if isinstance(template, list):
            template = next((t.get("template") for t in template
                             if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(template, str):
            return path, template
    return None


# A ChatML template that writes a system message of its own when the conversation has none.
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)[^'\"]")


def identify_hf_template(text: str) -> str | None:
    """Which of our templates writes what the Jinja template `text` writes, by its tokens:
    Llama 3.1's headers and date line, Qwen3's <think>, SmolLM2's system message, or plain
    ChatML. None for any other (including ChatML with a system message we do not know)."""
    if "<|start_header_id|>" in text and "<|eot_id|>" in text:
        return "llama3" if "Cutting Knowledge Date" in text else None
    if "<|im_start|>" not in text:
        return None
    if "<think>" in text:
        return "qwen3"
    if SMOLLM2_SYSTEM in text:
        return "smollm2"
    return None if _CHATML_DEFAULT_SYSTEM.search(text) else "chatml"


def read_generation_config(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's generation_config.json as a dict ({} when it has none)."""
    return _read_json_object(Path(checkpoint) / GENERATION_CONFIG_FILE)


def stop_token_ids(checkpoint: str | os.PathLike) -> tuple[int, ...]:
    """The token ids that end a reply by the checkpoint's own files: ``eos_token_id`` (one id or
    a list) of generation_config.json, else of config.json. The template adds its own
    end-of-turn token to these (see `ChatTemplate.stop_tokens`)."""
    directory = Path(checkpoint)
    for filename in (GENERATION_CONFIG_FILE, CONFIG_FILE):
        path = directory / filename
        eos = _read_json_object(path).get("eos_token_id")
        if eos is None:
            continue
        ids = eos if isinstance(eos, list) else [eos]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise CheckpointError(f"{path}: eos_token_id must be a token id or a list of them, "
                                  f"got {eos!r}")
        return tuple(ids)
    return ()


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} if there is no such file. A damaged file is a
    CheckpointError naming it."""
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    return values if isinstance(values, dict) else {}


def set_chat_template(checkpoint: str | os.PathLike, name: str) -> None:
    """Record in a checkpoint's config.json which chat template it expects (atomically)."""
    get_template(name)
    directory = resolve_checkpoint(checkpoint)
    path = directory / CONFIG_FILE
    values = json.loads(path.read_text(encoding="utf-8"))
    values[TEMPLATE_KEY] = name
    with atomic_write(path) as f:
        f.write((json.dumps(values, indent=2) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Messages


def split_thinking(text: str) -> tuple[str | None, str, bool]:
    """A reply taken apart: (reasoning, answer, still_thinking).

    reasoning is None when the reply does not open with <think>; still_thinking is True while
    the </think> has not come yet (a reply being streamed). Blank lines around both parts go.
    >>> split_thinking("<think>\\nHmm.\\n</think>\\n\\nParis.")
    ('Hmm.', 'Paris.', False)
    """
    stripped = text.lstrip()
    if not stripped.startswith("<think>"):
        return None, text, False
    inside = stripped[len("<think>"):]
    if "</think>" not in inside:
        return inside.strip("\n"), "", True
    reasoning, _, answer = inside.partition("</think>")
    return reasoning.strip("\n"), answer.lstrip("\n"), False


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
