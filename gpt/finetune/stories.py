"""A storyteller you can ask: supervised fine-tuning on conversations made from TinyStories.

    python train.py                               # pretraining, then this stage (RUN/chat/)
    python train.py chat --init runs/RUN          # this stage alone, on a pretrained run

A model pretrained on stories only continues text. Here it learns the chat format and that a
message is a request: it is trained on conversations made from the corpus itself
(`gpt.data.conversations`: for each story, a request built from what the story contains, and
the story as the answer), written in the "chat" template of `gpt.chat.templates`:

    <|endoftext|><|user|>Tell me a story about a dog named Max.<|end|><|assistant|>Once upon a
    time, there was a dog named Max. [...]<|end|><|user|>Thank you!<|end|><|assistant|>You are
    welcome! [...]<|end|>

`<|user|>`, `<|assistant|>` and `<|end|>` are special tokens of the tokenizer that pretraining
trains (`gpt.train.pretrain.build_tokenizer`). A prompt is encoded by the chat engine itself
(`gpt.chat.engine.ChatEngine.template_ids`), so training sees exactly the ids that chat.py and
the server will feed: turn tokens as their ids, and every message's text with special-token
text read as plain text (a user who types "<|end|>" gets seven characters' worth of ordinary
tokens, never the token).

The loss counts only what the assistant says: the targets are the tokens of each assistant
message and the `<|end|>` after it; every other target (the user's words, the turn tokens,
the padding) is IGNORE_INDEX (`encode_conversation`, `collate_examples`). Ending a reply with
`<|end|>` is what makes the model stop, and the chat engine stops there.

A conversation longer than the context is trimmed the way the chat engine trims history: the
oldest exchanges are dropped (never a system message) until what remains fits, and a turn
already trained on stays as context only (`conversation_examples`). Before any of that, a story
longer than the reply can be is cut after its last sentence that fits (`shorten_story`), and the
request is made from the cut story: every reply the model learns from ends with `<|end|>`
inside its window. An exchange that still does not fit is left out.

Data (`build_data`): the corpus's train stories that `gpt.data.conversations.split_holdout`
keeps, in file order, as many as the steps will see (`settings.max_iters` x `batch_size`
examples, each once); a validation loss on conversations made from the corpus's validation
stories, which no training stage ever sees. `--data` may also be a JSONL file of
conversations (`python -m gpt.data.conversations --out FILE` writes one): its "train" records
train and its others validate.

In `python train.py` this is the second stage (`pretrain_then_chat`): when pretraining ends,
its best checkpoint is copied to RUN/pretrained/ (the plain model: `chat.py --ckpt
RUN/pretrained` continues text), the stage trains in RUN/chat/ (settings.json, metrics.jsonl,
latest/ with the optimizer, results.json), and the storyteller is written to RUN/best/, which
is what `chat.py` opens for RUN. `--chat-iters 0` skips the stage. Its steps follow
pretraining's in `--stop-after`, and `--resume RUN` picks up whichever stage was running,
bit for bit (batches, dropout and the learning rate are functions of the step, the optimizer's
moments are in the checkpoint).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from autograd import functional as F
from autograd.optim import AdamW, decay_groups
from autograd.parallel import default_threads
from gpt.chat.engine import ChatEngine
from gpt.chat.templates import CHAT_TOKENS, ChatError, set_chat_template
from gpt.core.generate import SamplingParams
from gpt.data.conversations import (STORY_SEPARATOR, Conversation, ConversationError,
                                    make_conversations, split_holdout)
from gpt.data.corpora import DATASETS, DataError, load_text_splits
from gpt.finetune.common import (IGNORE_INDEX, FinetuneSettings, evaluate_batches, fit, load_base,
                                 run_summary, start_run, write_results)
from gpt.io.checkpoint import (STATE_FILE, CheckpointError, load_pretrained,
                               load_tokenizer_from, load_training_state, read_settings_file,
                               resolve_checkpoint, save_checkpoint)
from gpt.train.evaluate import token_byte_lengths
from gpt.train.loop import (METRICS_FILE, SETTINGS_FILE, TrainingError, create_run_directory,
                            training_threads)
from gpt.train.pretrain import TrainSettings, prepare_run, train

TEMPLATE = "chat"
STAGE_DIR = "chat"                  # the stage's directory inside a pretraining run
PRETRAINED_DIR = "pretrained"       # the plain pretrained checkpoint, kept beside the storyteller
# Tokens kept for the request when a story is cut to fit: "<|endoftext|><|user|>" + a request
# of up to ~30 tokens + "<|end|><|assistant|>".
REQUEST_RESERVE = 40
MIN_STORY_TOKENS = 24               # a story cut shorter than this is left out
STORIES_PER_CHUNK = 2000            # conversations are made this many stories at a time
VAL_STORIES = 256                   # validation stories to make held-out conversations from
# Requests the log answers at the end of a run (greedy), to show what the model does.
SHOWCASE = ("Tell me a story about a dog named Max who finds a red ball.",
            "Hi! What can you do?")


class Example(NamedTuple):
    """One training row: token ids (n,) and which of them are targets (the assistant's)."""
    ids: np.ndarray                 # (n,) int64
    trained: np.ndarray             # (n,) bool: predict ids[t] from ids[:t] counts in the loss


# ----------------------------------------------------------------------------------------------
# Conversations as token ids


def encode_conversation(engine: ChatEngine, messages: Sequence[Mapping[str, str]],
                        train_from: int = 0) -> Example:
    """The ids of a conversation in the engine's template, and which ones the loss counts.

    For each assistant message i the prompt is `engine.template_ids(messages[:i])`, exactly
    what the chat engine feeds to get that reply; the reply's tokens and the template's end of
    turn follow. Assistant messages before index `train_from` are context only.
    """
    if not engine.template.stop_tokens:
        raise ChatError(f"the {engine.template.name!r} template has no end-of-turn token to "
                        f"train replies to end with")
    end_id = engine.tokenizer.token_id(engine.template.stop_tokens[0])
    ids: list[int] = []
    trained: list[bool] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = engine.template_ids(messages[:index])
        if prompt[:len(ids)] != ids:
            raise ChatError(f"the {engine.template.name!r} template writes a conversation's "
                            f"earlier turns differently once it goes on; it cannot be trained")
        reply = engine.encode(message["content"]) + [end_id]
        trained += [False] * (len(prompt) - len(ids)) + [index >= train_from] * len(reply)
        ids = prompt + reply
    if not ids:
        raise ChatError("a conversation to train on needs an assistant message")
    return Example(np.array(ids, dtype=np.int64), np.array(trained, dtype=bool))


def _next_exchange(messages: Sequence[Mapping[str, str]], first: int) -> int:
    """Where the next exchange after the one at `first` begins: the next user message."""
    end = first + 1
    while end < len(messages) and messages[end]["role"] != "user":
        end += 1
    return end


def conversation_examples(engine: ChatEngine, messages: Sequence[Mapping[str, str]],
                          max_tokens: int) -> tuple[list[Example], int]:
    """Rows of at most `max_tokens` ids that train each assistant turn of a conversation once,
    and how many turns were left out because their exchange alone does not fit.

    One row while the conversation fits. A turn that does not fit in the row so far starts a
    new row, whose history loses its oldest exchanges (a system message stays) until it fits:
    the chat engine's trimming. Turns in that history were trained already: context only.
    """
    messages = list(messages)
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system):]

    def encode(first: int, first_trained: int, last: int) -> Example:
        window = system + body[first:last + 1]
        return encode_conversation(engine, window, len(system) + first_trained - first)

    examples: list[Example] = []
    row: tuple[int, int, Example] | None = None     # (first message, first trained turn, ids)
    start, left_out = 0, 0                          # no row begins before message `start`
    for index, message in enumerate(body):
        if message["role"] != "assistant":
            continue
        if row is not None:
            grown = encode(row[0], row[1], index)
            if len(grown.ids) <= max_tokens:
                row = (row[0], row[1], grown)
                continue
            examples.append(row[2])
            row = None
        while True:                                 # a new row: as much history as fits
            example = encode(start, index, index)
            if len(example.ids) <= max_tokens:
                row = (start, index, example)
                break
            following = _next_exchange(body, start)
            if following >= index:                  # this turn's exchange alone is too long
                break
            start = following
        if row is None:
            left_out += 1
            start = index + 1
    if row is not None:
        examples.append(row[2])
    return examples, left_out


def collate_examples(examples: Sequence[Example], pad_id: int,
                     ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), both (B, T) int64, T the longest row minus one: row i's inputs are
    its ids but the last, its targets the ids after each position where `trained` says so and
    `ignore_index` elsewhere (the padding included)."""
    if not examples:
        raise ValueError("collate_examples: empty batch")
    width = max(len(e.ids) for e in examples) - 1
    inputs = np.full((len(examples), width), pad_id, dtype=np.int64)
    targets = np.full((len(examples), width), ignore_index, dtype=np.int64)
    for row, (ids, trained) in enumerate(examples):
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = np.where(trained[1:], ids[1:], ignore_index)
    return inputs, targets


# ----------------------------------------------------------------------------------------------
# Stories and the conversations made from them

SENTENCE_END = re.compile(r"[.!?][\"'”’]*(?=\s|$)")


def shorten_story(engine: ChatEngine, story: str, max_tokens: int) -> str | None:
    """`story` if it is at most `max_tokens` tokens, else its longest run of whole sentences
    from the start that is; None if that is shorter than MIN_STORY_TOKENS tokens."""
    ids = engine.encode(story)
    if len(ids) <= max_tokens:
        return story
    head = engine.tokenizer.decode(ids[:max_tokens])
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    while ends:
        cut = story[:ends.pop()]
        n = len(engine.encode(cut))
        if n < MIN_STORY_TOKENS:
            return None
        if n <= max_tokens:     # a prefix of the text can take a token more than its decode
            return cut
    return None


def stories_of(text: str) -> list[str]:
    """The stories of a TinyStories-style text (each followed by <|endoftext|>)."""
    return [s.strip() for s in text.split(STORY_SEPARATOR) if s.strip()]


@dataclass
class ChatData:
    """Training and validation rows, and what making them left out."""
    train: list[Example]
    val: list[Example]
    stats: dict[str, int] = field(default_factory=dict)


def examples_from(engine: ChatEngine, conversations: Sequence[Conversation], max_tokens: int,
                  stats: dict[str, int]) -> list[Example]:
    rows = []
    for conversation in conversations:
        found, left_out = conversation_examples(engine, conversation.messages, max_tokens)
        rows += found
        stats["turns_left_out"] = stats.get("turns_left_out", 0) + left_out
    return rows


def build_data(engine: ChatEngine, train_stories: Sequence[str], val_stories: Sequence[str],
               n_train: int | None, seed: int, max_tokens: int | None = None,
               log: Callable[[str], None] = print) -> ChatData:
    """`n_train` training rows (None: from every story) and the validation rows.

    Stories are taken in order, STORIES_PER_CHUNK at a time (chunk c's conversations from seed
    + c), cut to fit (`shorten_story`), and made into conversations until there are enough
    rows; a story `split_holdout` holds out is never used. Rows hold at most `max_tokens` ids
    (default: the context plus one, inputs and targets being the row shifted by one).
    """
    max_tokens = max_tokens or engine.context_length + 1
    reply_tokens = max_tokens - REQUEST_RESERVE - 1            # the reply's <|end|>
    if reply_tokens < MIN_STORY_TOKENS:
        raise TrainingError(f"a context of {max_tokens - 1} tokens leaves no room for a story "
                            f"after a request ({REQUEST_RESERVE} tokens); use a model with a "
                            f"longer context")
    stats = {"stories": 0, "stories_cut": 0, "stories_left_out": 0}

    def fitting(stories: Sequence[str]) -> list[str]:
        kept = []
        for story in stories:
            short = shorten_story(engine, story, reply_tokens)
            stats["stories"] += 1
            stats["stories_cut"] += short is not None and short != story
            stats["stories_left_out"] += short is None
            if short is not None:
                kept.append(short)
        return kept

    kept, _ = split_holdout(train_stories)
    train: list[Example] = []
    for chunk, start in enumerate(range(0, len(kept), STORIES_PER_CHUNK)):
        if n_train is not None and len(train) >= n_train:
            break
        stories = fitting(kept[start:start + STORIES_PER_CHUNK])
        if stories:
            conversations = make_conversations(stories, seed + chunk, split="train")
            train += examples_from(engine, conversations, max_tokens, stats)
    if n_train is not None:
        train = train[:n_train]
    val_source = fitting(list(val_stories)[:VAL_STORIES])
    val = examples_from(engine, make_conversations(val_source, seed + 1_000_003,
                                                   split="held_out"), max_tokens, stats) \
        if val_source else []
    if not train:
        raise DataError("no training conversation fits the model's context")
    if n_train is not None and len(train) < n_train:
        log(f"note: the corpus gives {len(train):,} training conversations, fewer than the "
            f"{n_train:,} the steps could use; some are seen more than once")
    return ChatData(train, val, stats)


def load_chat_sources(source: str, data_dir: str | None = None
                      ) -> tuple[list[str], list[str]] | list[Conversation]:
    """What `--data` names: (train stories, validation stories) of a corpus (a registered
    name, a text file, a directory with train.txt and valid.txt), or the conversations of a
    JSONL file."""
    path = Path(source).expanduser()
    if source not in DATASETS and path.suffix == ".jsonl" and path.is_file():
        conversations = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                conversations.append(Conversation.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
                raise DataError(f"{path}, line {number}: not a conversation written by "
                                f"gpt.data.conversations ({error})") from None
        if not conversations:
            raise DataError(f"{path} holds no conversations")
        return conversations
    splits = load_text_splits(source, data_dir=data_dir)
    train, val = stories_of(splits.train), stories_of(splits.val)
    if STORY_SEPARATOR not in splits.train or len(train) < 2:
        raise ConversationError(f"{source}: not a corpus of stories (each followed by "
                                f"{STORY_SEPARATOR}), which the conversations are made from")
    return train, val


def prepare_data(engine: ChatEngine, settings: FinetuneSettings,
                 log: Callable[[str], None] = print) -> ChatData:
    """The rows `settings` ask for (see `build_data` and `load_chat_sources`)."""
    n_train = settings.max_iters * settings.batch_size if settings.max_iters else None
    max_tokens = min(settings.max_length or engine.context_length, engine.context_length) + 1
    sources = load_chat_sources(settings.data, settings.data_dir)
    if isinstance(sources, list):
        stats: dict[str, int] = {}
        train = examples_from(engine, [c for c in sources if c.split == "train"], max_tokens,
                              stats)
        val = examples_from(engine, [c for c in sources if c.split != "train"], max_tokens,
                            stats)
        if not train:
            raise DataError(f"{settings.data}: no training conversation fits the context")
        return ChatData(train, val, stats)
    train_stories, val_stories = sources
    return build_data(engine, train_stories, val_stories, n_train, settings.seed, max_tokens,
                      log)


# ----------------------------------------------------------------------------------------------
# Training


def answer(engine: ChatEngine, request: str, max_new_tokens: int) -> str:
    """The model's greedy reply to one request."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    return engine.chat([{"role": "user", "content": request}], params).read().strip()


def train_state(step: int, results: dict | None = None) -> dict[str, Any]:
    """train_state.json of a chat checkpoint: the step, and the template chat.py uses."""
    state: dict[str, Any] = {"task": "chat", "step": step, "chat_template": TEMPLATE}
    if results is not None:
        state["results"] = results
    return state


def save_storyteller(directory: Path, model, tokenizer, state: dict,
                     optimizer: AdamW | None = None) -> Path:
    """A checkpoint that chat.py opens with the chat template (recorded in config.json too)."""
    path = save_checkpoint(directory, model, tokenizer,
                           optimizer.state_dict() if optimizer is not None else None, state)
    set_chat_template(path, TEMPLATE)
    return path


def load_data(model, tokenizer, settings: FinetuneSettings,
              log: Callable[[str], None] = print) -> ChatData:
    """The rows to train `model` on (see `prepare_data`), with a line of what they are."""
    data = prepare_data(ChatEngine(model, tokenizer, TEMPLATE), settings, log)
    log(f"conversations: {len(data.train):,} training rows, {len(data.val):,} validation rows"
        + "".join(f"; {v:,} {k.replace('_', ' ')}" for k, v in data.stats.items() if v))
    return data


def train_chat(model, tokenizer, settings: FinetuneSettings, data: ChatData, directory: Path,
               log: Callable[[str], None] = print, *, resume_from: Path | None = None,
               stop_after: int | None = None) -> tuple[dict, Any]:
    """Fine-tune `model` on `data` in the run directory `directory` (made already), from the
    checkpoint `resume_from` (directory/latest of an interrupted run) if given. Saves
    directory/latest after every evaluation. Returns (results, LoopResult)."""
    pad = tokenizer.eot_id
    token_bytes = token_byte_lengths(tokenizer)
    rows = {"train": data.train, "val": data.val or data.train}

    def step_loss(indices: np.ndarray):
        inputs, targets = collate_examples([data.train[i] for i in indices], pad)
        return F.cross_entropy(model(inputs), targets), {"tokens": inputs.size}

    def evaluate(split: str, max_batches: int | None) -> dict[str, float]:
        def one_batch(indices):
            inputs, targets = collate_examples([rows[split][i] for i in indices], pad)
            total = F.cross_entropy(model(inputs), targets, reduction="sum").item()
            counted = targets[targets != IGNORE_INDEX]
            return {"loss": (total, counted.size),
                    "bpb": (total / math.log(2), int(token_bytes[counted].sum()))}
        return evaluate_batches(model, len(rows[split]), settings.batch_size, max_batches,
                                one_batch)

    optimizer = AdamW(decay_groups(model, settings.weight_decay), lr=settings.lr,
                      betas=(0.9, 0.999))
    start_step = 0
    if resume_from is not None:
        optimizer_state, state = load_training_state(resume_from)
        if optimizer_state is None or state is None:
            raise TrainingError(f"cannot resume: {resume_from} is not a training checkpoint")
        optimizer.load_state_dict(optimizer_state)
        start_step = int(state["step"])

    def checkpoint(step: int, numbers: dict[str, float]) -> str:
        save_storyteller(directory / "latest", model, tokenizer, train_state(step), optimizer)
        return " (saved)"

    threads = settings.threads or default_threads()
    with training_threads(threads) as parallel:
        result = fit(model, settings, len(data.train), step_loss, evaluate, directory, log,
                     optimizer=optimizer, start_step=start_step, checkpoint=checkpoint,
                     parallel=parallel, stop_after=stop_after)
    first = result.history[0] if result.history else {}
    results = {"task": "chat", "init": settings.init, **run_summary(result, _counts(model)),
               "initial_val_loss": first.get("eval_val_loss"),
               "val_loss": round(result.final["val_loss"], 4),
               "train_rows": len(data.train), "val_rows": len(data.val), **data.stats}
    return results, result


def _counts(model) -> dict[str, int]:
    params = model.parameters()
    return {"trainable": int(sum(p.size for p in params if p.requires_grad)),
            "total": int(sum(p.size for p in params))}


def showcase(engine: ChatEngine, max_new_tokens: int, log: Callable[[str], None]) -> dict:
    """Greedy replies to the SHOWCASE requests, logged; {request: reply}."""
    replies = {}
    for request in SHOWCASE:
        replies[request] = answer(engine, request, max_new_tokens)
        log(f"\n> {request}\n{replies[request]}")
    return replies


def run_chat(settings: FinetuneSettings, log: Callable[[str], None] = print) -> dict:
    """`python train.py chat --init RUN`: fine-tune a pretrained model into a storyteller."""
    model, tokenizer, init_dir = load_base(settings)
    ChatEngine(model, tokenizer, TEMPLATE)      # the tokenizer must have the turn tokens
    data = load_data(model, tokenizer, settings, log)
    directory, _ = start_run(model, settings, log)
    results, result = train_chat(model, tokenizer, settings, data, directory, log)
    results["init"] = str(init_dir)
    results["samples"] = showcase(ChatEngine(model, tokenizer, TEMPLATE),
                                  settings.max_new_tokens, log)
    path = save_storyteller(directory / "latest", model, tokenizer,
                            train_state(result.steps, {k: v for k, v in results.items()
                                                       if k != "samples"}))
    write_results(directory, results)
    log(f"val loss {results['val_loss']:.4f} (at start {results['initial_val_loss']}); "
        f"{result.steps} steps in {result.seconds:.1f} s; checkpoint {path}; "
        f"chat with: python chat.py --ckpt {directory}")
    return results


# ----------------------------------------------------------------------------------------------
# The second stage of `python train.py`


def stage_settings(settings: TrainSettings, run_directory: Path) -> FinetuneSettings:
    """The chat stage's settings, all from the pretraining run's: its corpus, batch size,
    seed, threads and dropout; `chat_iters` steps at a peak of `chat_lr`."""
    return FinetuneSettings(
        task="chat", init=str(run_directory / PRETRAINED_DIR), data=settings.data,
        data_dir=settings.data_dir, max_iters=settings.chat_iters,
        batch_size=settings.batch_size * settings.grad_accum, lr=settings.chat_lr,
        schedule="cosine", warmup_iters=min(20, settings.chat_iters // 10),
        weight_decay=settings.weight_decay, grad_clip=settings.grad_clip,
        dropout=settings.dropout, eval_interval=max(1, min(settings.eval_interval,
                                                           settings.chat_iters)),
        eval_iters=settings.eval_iters, max_new_tokens=200, threads=settings.threads,
        out_dir=str(run_directory), run_name=STAGE_DIR, seed=settings.seed,
        progress=settings.progress)


def chat_stage_skipped(settings: TrainSettings, tokenizer) -> str | None:
    """Why the run has no chat stage (None: it has one): --chat-iters 0, a tokenizer without
    the turn tokens (a char or GPT-2 tokenizer), or a corpus that is not stories."""
    if settings.chat_iters == 0:
        return "--chat-iters is 0"
    missing = [t for t in CHAT_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        return f"the tokenizer has no {', '.join(missing)} special tokens"
    try:
        load_chat_sources(settings.data, settings.data_dir)
    except ConversationError as error:
        return str(error)
    return None


def keep_pretrained(run_directory: Path, log: Callable[[str], None] = print) -> Path:
    """Copy the finished pretraining's best checkpoint (weights, tokenizer, train state; not
    the optimizer) to RUN/pretrained/, where the chat stage starts from and which stays the
    plain model. Done once: the copy's existence marks pretraining as over."""
    pretrained = run_directory / PRETRAINED_DIR
    if not pretrained.exists():
        best = resolve_checkpoint(run_directory)
        _, state = load_training_state(best)
        save_checkpoint(pretrained, load_pretrained(best), load_tokenizer_from(best), None,
                        {k: state[k] for k in ("step", "best_val_loss", "settings")}
                        if state else None)
        log(f"pretrained model: {pretrained} (chat.py --ckpt {pretrained} continues text)")
    return pretrained


def pretraining_steps(run_directory: Path) -> int:
    """The step the finished pretraining ended at: that of its last checkpoint, RUN/latest/.
    (A run in minutes learns its length only by running; its settings keep what was asked.)"""
    _, state = load_training_state(run_directory / "latest")
    if state is None:
        raise CheckpointError(f"{run_directory / 'latest'} holds no {STATE_FILE}: cannot tell "
                              f"the step pretraining ended at")
    return int(state["step"])


def saved_checkpoint(directory: Path) -> Path | None:
    """The checkpoint saved as `directory` (or what a crash in its save left), None if none."""
    try:
        return resolve_checkpoint(directory)
    except CheckpointError:
        return None


def run_chat_stage(run_directory: Path, settings: TrainSettings,
                   log: Callable[[str], None] = print) -> dict | None:
    """Fine-tune the finished pretraining run in `run_directory` into a storyteller (RUN/best/),
    or go on with the stage where it stopped. Returns its results, None if it stopped early
    (Ctrl-C or --stop-after)."""
    pretrained = keep_pretrained(run_directory, log)
    stage = run_directory / STAGE_DIR
    chat = stage_settings(settings, run_directory)
    stop_after = None
    if settings.stop_after is not None:     # counted on from pretraining's last step
        stop_after = settings.stop_after - pretraining_steps(run_directory)
        if stop_after <= 0:
            return None
    resume_from = saved_checkpoint(stage / "latest") if (stage / SETTINGS_FILE).is_file() \
        else None
    model = load_pretrained(resume_from or pretrained, dropout=settings.dropout)
    tokenizer = load_tokenizer_from(resume_from or pretrained)
    data = load_data(model, tokenizer, chat, log)
    if resume_from is not None:
        log(f"chat stage: resuming from {resume_from}")
    else:
        if not (stage / SETTINGS_FILE).is_file():
            create_run_directory(chat, STAGE_DIR)
        (stage / METRICS_FILE).unlink(missing_ok=True)     # rows of a start that saved nothing
        log(f"chat stage: {chat.max_iters} steps of fine-tuning on conversations in {stage}")
    results, result = train_chat(model, tokenizer, chat, data, stage, log,
                                 resume_from=resume_from, stop_after=stop_after)
    if result.steps < chat.max_iters:
        log(f"chat stage stopped at its step {result.steps}; resume with: python train.py "
            f"--resume {run_directory}")
        return None
    results["samples"] = showcase(ChatEngine(model, tokenizer, TEMPLATE), chat.max_new_tokens,
                                  log)
    path = save_storyteller(run_directory / "best", model, tokenizer,
                            train_state(result.steps, {k: v for k, v in results.items()
                                                       if k != "samples"}))
    write_results(stage, results)
    log(f"storyteller: {path} (val loss {results['val_loss']:.4f} on held-out conversations); "
        f"chat with: python chat.py --ckpt {run_directory}")
    return results


def stage_done(run_directory: Path) -> bool:
    return (run_directory / STAGE_DIR / "results.json").is_file()


def read_run_settings(run_directory: Path, overrides: Mapping[str, Any]) -> TrainSettings:
    """A run's TrainSettings from its settings.json (checked: `read_settings_file`), with
    `overrides` (when to stop, the progress bar) from this command line."""
    saved = read_settings_file(run_directory / SETTINGS_FILE, TrainSettings)
    return TrainSettings(**{**saved, **overrides})


def pretrain_then_chat(settings: TrainSettings, resume: str | os.PathLike | None = None,
                       log: Callable[[str], None] = print) -> dict:
    """`python train.py [--resume RUN]`: pretraining, then the chat stage; each resumes where
    it stopped. Returns pretraining's summary with the stage's results under "chat"."""
    overrides = {"stop_after": settings.stop_after, "progress": settings.progress}
    if resume is not None:
        directory = Path(resume).expanduser()
        if (directory / PRETRAINED_DIR).exists():         # pretraining is over
            if stage_done(directory):
                log(f"{directory} is complete: both stages have run")
                return {"run_directory": str(directory), "chat": None}
            saved = read_run_settings(directory, overrides)
            saved.validate()
            return {"run_directory": str(directory),
                    "chat": run_chat_stage(directory, saved, log)}
    run = prepare_run(settings, resume=resume, log=log)
    summary = train(run)
    s = run.settings
    if not summary["completed"]:           # stopped early (Ctrl-C, --stop-after): no stage yet
        return summary
    reason = chat_stage_skipped(s, run.tokenizer)
    if reason is not None:
        log(f"no chat stage: {reason}")
        return summary
    summary["chat"] = run_chat_stage(run.directory, s, log)
    return summary
