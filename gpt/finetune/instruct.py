"""Instruction fine-tuning (chapter 7): a pretrained GPT learns to answer in a fixed layout.

    python train.py instruct --init runs/pretrain [--mask-prompt] [--lora-rank 16]

Each record has an `instruction`, an optional `input` and the desired `output`. The model is
trained on ordinary next-token prediction over text laid out like this (the Alpaca layout,
exactly as the book writes it):

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    Rewrite the sentence using a simile.

    ### Input:
    The car is very fast.

    ### Response:
    The car is as fast as lightning.<|endoftext|>

(without an input the `### Input:` paragraph is left out). At inference the prompt ends after
`### Response:\\n` and the model writes the rest; `chat.py` with the "alpaca" template builds the
same prompt, and the checkpoint records that template (`chat_template` in train_state.json).

A chat model keeps its own layout instead (`prompt_format_for`): a checkpoint whose chat template
has turn tokens of its own (Qwen3's ChatML, Llama 3's headers, SmolLM2's, the storyteller's; see
gpt.chat.templates) is trained on the record as one user message and the assistant's reply,
exactly as `chat.py` will later write that conversation, ended by the template's end-of-turn
token (<|im_end|>, <|eot_id|>) rather than <|endoftext|>:

    <|im_start|>user
    Rewrite the sentence using a simile.

    The car is very fast.<|im_end|>
    <|im_start|>assistant
    <think>

    </think>

    The car is as fast as lightning.<|im_end|>

(Qwen3's own template writes an empty <think> block before a reply without reasoning: the
prompt is the one with thinking switched off, which ends with that block. Chatting with thinking
on still prompts the model to reason first.) The fine-tuned checkpoint keeps the template, and
the test answers are asked for in it.

Batches (`collate_instruct`): each example is the prompt's tokens followed by the response's
(encoded separately, so the prompt is tokenized exactly as it will be at inference), then one
end-of-text token (a chat template's end of turn). Rows are padded with that token to the
longest in the batch; inputs are the row without its last token and targets the row shifted by
one. The first end-of-text target of a row is kept (the model must learn to stop) and the
padding after it becomes -100, which
`F.cross_entropy` ignores: padding does not dilute the mean. With `--mask-prompt` the targets
inside the prompt become -100 too, so the loss is only on the response.

The records are split in file order 85 % train, 10 % test, 5 % validation (the book's split:
935 / 110 / 55 of the 1,100 records in `instruction-data.json`). After training the model
answers every test instruction (greedy decoding) and the answers are written beside the
checkpoint in `test_responses.json`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from autograd import functional as F
from autograd.nn import Module
from gpt.chat.engine import ChatEngine
from gpt.chat.templates import (ChatError, TemplateOptions, chat_template_for, format_alpaca,
                                get_template, stop_token_ids)
from gpt.core.generate import SamplingParams, generate
from gpt.data.corpora import DATASETS, DataError, fetch
from gpt.finetune.common import (IGNORE_INDEX, FinetuneSettings, evaluate_batches, fit, load_base,
                                 run_summary, save_model, split_by_fractions, start_run,
                                 write_results)
from gpt.io.checkpoint import CheckpointError
from gpt.train.evaluate import token_byte_lengths
from gpt.train.loop import TrainingError

RESPONSE_HEADER = "\n\n### Response:\n"
# train, test, validation: the book's order and proportions
SPLIT_FRACTIONS = (0.85, 0.10, 0.05)
SPLIT_NAMES = ("train", "test", "val")
RESPONSES_FILE = "test_responses.json"
# A small model often starts a new "### Instruction:" section instead of stopping: cut there
# (the chat's Alpaca template stops at the same strings).
STOP_STRINGS = ("\n\n###", "\n###", "###")


# ----------------------------------------------------------------------------------------------
# Records and prompts


def format_prompt(entry: dict) -> str:
    """What the model reads before it answers: preamble, instruction, the input if there is
    one, and the response header (the layout lives in `gpt.chat.templates.format_alpaca`)."""
    return format_alpaca(entry["instruction"], entry.get("input") or "")


def format_input(entry: dict) -> str:
    """The prompt of one record without the response header."""
    return format_prompt(entry)[:-len(RESPONSE_HEADER)]


def user_message(entry: dict) -> dict[str, str]:
    """A record as a chat model's user turn: the instruction, and the input after a blank line."""
    text = entry["instruction"] + (f"\n\n{entry['input']}" if entry.get("input") else "")
    return {"role": "user", "content": text}


class PromptFormat:
    """How a model is shown a record: its prompt's token ids, and the token that ends a response
    (which also pads the batches: padding after it is never a target).

    template "alpaca": the book's layout (`format_prompt`), ended by <|endoftext|>. Any other is
    a chat template with turn tokens of its own (gpt.chat.templates): the record is one user
    message, the prompt is what `ChatEngine` feeds the model for it (thinking switched off), and
    the template's end of turn ends the response.
    """

    def __init__(self, tokenizer, template: str = "alpaca", engine: ChatEngine | None = None):
        self.tokenizer, self.template, self.engine = tokenizer, template, engine
        if engine is None:
            if tokenizer.eot_id is None:
                raise TrainingError("the tokenizer has no <|endoftext|> token to end responses "
                                    "with, and the checkpoint no chat template with a token "
                                    "that ends a turn")
            self.end_id = tokenizer.eot_id
            self.stop_ids: tuple[int, ...] = (tokenizer.eot_id,)
        else:
            self.end_id = tokenizer.token_id(engine.template.stop_tokens[0])
            self.stop_ids = engine.stop_tokens()

    def prompt_ids(self, entry: dict) -> list[int]:
        """What the model reads before it answers `entry`."""
        if self.engine is None:
            return self.text_ids(format_prompt(entry))
        return self.engine.template_ids([user_message(entry)])

    def text_ids(self, text: str) -> list[int]:
        """Plain text (a response) as ids. Text that looks like a special token stays plain
        text: records are data, not control."""
        return self.tokenizer.encode(text, allowed_special="none")


def prompt_format_for(model: Module, tokenizer, checkpoint: Path,
                      log: Callable[[str], None] = print) -> PromptFormat:
    """The checkpoint's own chat template when it has one with turn tokens (a chat model's);
    else the Alpaca layout. A template that cannot be used (one not written here, or whose
    tokens this tokenizer lacks) falls back to Alpaca, with a note."""
    try:
        name = chat_template_for(checkpoint)
        template = get_template(name)
        if not template.control_tokens or not template.stop_tokens:
            return PromptFormat(tokenizer)
        engine = ChatEngine(model, tokenizer, name, stop_ids=stop_token_ids(checkpoint),
                            options=TemplateOptions(enable_thinking=False))
    except (ChatError, CheckpointError) as error:
        log(f"note: the Alpaca layout, not the checkpoint's chat template: {error}")
        return PromptFormat(tokenizer)
    return PromptFormat(tokenizer, name, engine)


def load_records(source: str | Path, data_dir: str | None = None,
                 required: Sequence[str] = ("instruction", "output"),
                 optional: Sequence[str] = ("input",)) -> list[dict[str, str]]:
    """Records from a registered name or a JSON file (a list of objects) or a JSONL file (one
    object per line).

    Every record must be an object whose `required` fields are strings; `optional` fields may
    be missing or null (they become ""). Anything else is a DataError naming the record (its
    index, counting from 0) and the field. Extra fields are kept.
    """
    path = fetch(str(source), data_dir=data_dir) if str(source) in DATASETS \
        else Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"{str(source)!r} is neither a registered data set nor an existing file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {error.start})") from None
    if not text.strip():
        raise DataError(f"{path} is empty")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, "
                            f"column {error.colno}") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}); expected "
                                f"a JSON list of records or one JSON object per line") from None
    return check_records(records, path, required, optional)


def check_records(records: Any, source: object, required: Sequence[str],
                  optional: Sequence[str] = ("input",)) -> list[dict[str, str]]:
    """Validate parsed records (see `load_records`); returns cleaned copies."""
    if not isinstance(records, list):
        raise DataError(f"{source}: expected a list of records, got a JSON "
                        f"{type(records).__name__}")
    if not records:
        raise DataError(f"{source}: no records")
    clean = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {index} is a {type(record).__name__}, not an "
                            f"object with fields {', '.join(required)}")
        missing = [f for f in required if f not in record]
        if missing:
            raise DataError(f"{source}: record {index} has no {', '.join(map(repr, missing))} "
                            f"field (it has: {', '.join(map(repr, record)) or 'none'})")
        record = dict(record)
        for field in optional:
            if record.get(field) is None:
                record[field] = ""
        for field in (*required, *optional):
            if not isinstance(record[field], str):
                raise DataError(f"{source}: record {index}: field {field!r} must be a string, "
                                f"got {type(record[field]).__name__}")
        clean.append(record)
    return clean


def split_records(records: list) -> dict[str, list]:
    """{"train", "test", "val"}: 85 / 10 / 5 % in file order (no shuffling, as the book)."""
    return dict(zip(SPLIT_NAMES, split_by_fractions(records, SPLIT_FRACTIONS)))


def encode_example(prompt_format: PromptFormat, entry: dict, response_field: str = "output"
                   ) -> tuple[list[int], int]:
    """(token ids of prompt + response, number of prompt tokens); the token that ends the
    response is `collate_instruct`'s to add."""
    prompt = prompt_format.prompt_ids(entry)
    return prompt + prompt_format.text_ids(entry[response_field]), len(prompt)


# ----------------------------------------------------------------------------------------------
# Batches


def collate_instruct(batch: Sequence[Sequence[int]], pad_token_id: int,
                     ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None,
                     prompt_lengths: Sequence[int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), both (B, T) int64, from token lists of different lengths.

    Row i is `batch[i] + [pad]`, padded with `pad` to the longest such row; inputs drop its
    last token, targets its first. In the targets, the end-of-text right after the example
    stays (it teaches the model to stop) and every later padding position is `ignore_index`.
    With `prompt_lengths`, the targets that are prompt tokens (positions 0 .. p-2 for a prompt
    of p tokens: target t is token t+1) become `ignore_index` too. Rows are cut to
    `allowed_max_length` tokens last.

    The book's example, pad 50256:
        [0,1,2,3,4], [5,6], [7,8,9] -> targets [[1,2,3,4,50256], [6,50256,-100,-100,-100],
                                                [8,9,50256,-100,-100]]
    """
    if not batch:
        raise ValueError("collate_instruct: empty batch")
    width = max(len(row) for row in batch)          # + 1 end-of-text - 1 for the shift
    if width == 0:
        raise ValueError("collate_instruct: every example is empty")
    inputs = np.full((len(batch), width), pad_token_id, dtype=np.int64)
    targets = np.full((len(batch), width), ignore_index, dtype=np.int64)
    for i, row in enumerate(batch):
        n = len(row)
        if n == 0:
            continue                                # nothing to predict: all padding
        inputs[i, :n] = row
        targets[i, :n - 1] = row[1:]
        targets[i, n - 1] = pad_token_id            # the one end-of-text target kept
        if prompt_lengths is not None:
            targets[i, :max(prompt_lengths[i] - 1, 0)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


# ----------------------------------------------------------------------------------------------
# Answers


def clean_response(text: str) -> str:
    """The generated text up to the first stop string, stripped."""
    cut = min((text.find(s) for s in STOP_STRINGS if s in text), default=len(text))
    return text[:cut].strip()


def generate_response(model: Module, tokenizer, entry: dict, max_new_tokens: int = 100,
                      prompt_format: PromptFormat | None = None) -> str:
    """The model's greedy answer to one record's instruction (and input), in `prompt_format`
    (default: Alpaca)."""
    prompt_format = prompt_format or PromptFormat(tokenizer)
    ids = generate(model, prompt_format.prompt_ids(entry),
                   SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                                  stop_tokens=prompt_format.stop_ids,
                                  vocab_size=tokenizer.vocab_size))
    text = tokenizer.decode(ids)
    # A chat template's reply ends at its end-of-turn token; "###" there may be Markdown.
    return clean_response(text) if prompt_format.engine is None else text.strip()


def write_test_responses(path: Path, model: Module, tokenizer, entries: Sequence[dict],
                         max_new_tokens: int, progress: bool = True,
                         prompt_format: PromptFormat | None = None) -> list[dict]:
    """Answer each entry; write [{...record, "model_response": ...}] as JSON to `path`."""
    out = []
    for entry in tqdm(entries, desc="answering test instructions", disable=not progress,
                      dynamic_ncols=True):
        out.append({**entry, "model_response": generate_response(model, tokenizer, entry,
                                                                 max_new_tokens, prompt_format)})
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def answer_test_split(directory: Path, model: Module, tokenizer, test: Sequence[dict],
                      settings: FinetuneSettings,
                      prompt_format: PromptFormat | None = None) -> list[dict]:
    """Answer the first `settings.test_responses` test records (all if None) into
    `directory`/test_responses.json; returns the answers ([] when asked for none)."""
    n = len(test) if settings.test_responses is None else min(settings.test_responses, len(test))
    if not n:
        return []
    model.eval()
    return write_test_responses(directory / RESPONSES_FILE, model, tokenizer, test[:n],
                                settings.max_new_tokens, settings.progress, prompt_format)


# ----------------------------------------------------------------------------------------------
# Training


def encode_split(prompt_format: PromptFormat, entries: Sequence[dict], max_length: int,
                 mask_prompt: bool, response_field: str = "output"
                 ) -> tuple[list[list[int]], list[int], int, int]:
    """(token lists, prompt lengths, how many were cut to max_length, how many were dropped).

    With `mask_prompt`, an example whose prompt fills the whole window has no target left and
    is dropped (a batch of only such rows would have no loss at all).
    """
    rows, prompts, cut, dropped = [], [], 0, 0
    for entry in entries:
        ids, prompt_len = encode_example(prompt_format, entry, response_field)
        if mask_prompt and prompt_len >= max_length:
            dropped += 1
            continue
        cut += len(ids) > max_length         # the end-of-text target falls off
        rows.append(ids)
        prompts.append(prompt_len)
    return rows, prompts, cut, dropped


def run_instruct(settings: FinetuneSettings, log: Callable[[str], None] = print) -> dict:
    """`python train.py instruct`: fine-tune, evaluate, answer the test split, save."""
    model, tokenizer, init_dir = load_base(settings)
    records = load_records(settings.data, settings.data_dir)
    splits = split_records(records)
    if not splits["train"]:
        raise DataError(f"{settings.data}: {len(records)} records leave no training examples "
                        f"after the 85/10/5 split")
    prompt_format = prompt_format_for(model, tokenizer, init_dir, log)
    pad = prompt_format.end_id
    block = model.config.block_size
    max_length = min(settings.max_length or block, block)
    encoded = {}
    for name, entries in splits.items():
        rows, prompts, cut, dropped = encode_split(prompt_format, entries, max_length,
                                                   settings.mask_prompt)
        encoded[name] = (rows, prompts)
        if cut or dropped:
            log(f"{name}: {cut} of {len(entries)} examples are longer than {max_length} tokens "
                f"and were cut" + (f"; {dropped} dropped (prompt alone too long)"
                                   if dropped else ""))
    if not encoded["train"][0]:
        raise DataError("no training example fits the length limit with --mask-prompt")

    directory, counts = start_run(model, settings, log)
    log(f"data: {', '.join(f'{len(v)} {k}' for k, v in splits.items())} records, in the "
        f"{prompt_format.template!r} layout")

    def batch(split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, prompts = encoded[split]
        return collate_instruct([rows[i] for i in indices], pad, IGNORE_INDEX, max_length,
                                [prompts[i] for i in indices] if settings.mask_prompt else None)

    def step_loss(indices: np.ndarray):
        inputs, targets = batch("train", indices)
        return F.cross_entropy(model(inputs), targets), {"tokens": inputs.size}

    token_bytes = token_byte_lengths(tokenizer)

    def evaluate(split: str, max_batches: int | None) -> dict[str, float]:
        def one_batch(indices):
            inputs, targets = batch(split, indices)
            total = F.cross_entropy(model(inputs), targets, reduction="sum").item()
            counted = targets[targets != IGNORE_INDEX]
            # loss per token, and bits per byte of the predicted text (gpt.train.evaluate)
            return {"loss": (total, counted.size),
                    "bpb": (total / math.log(2), int(token_bytes[counted].sum()))}
        return evaluate_batches(model, len(encoded[split][0]), settings.batch_size,
                                max_batches, one_batch)

    result = fit(model, settings, len(encoded["train"][0]), step_loss, evaluate, directory, log)
    final = {split: evaluate(split, None)["loss"] for split in ("train", "val", "test")
             if encoded[split][0]}
    first = result.history[0] if result.history else {}
    results = {"task": "instruct", "init": str(init_dir), "mask_prompt": settings.mask_prompt,
               "lora_rank": settings.lora_rank, "chat_template": prompt_format.template,
               **run_summary(result, counts),
               "initial_train_loss": first.get("eval_train_loss"),
               "initial_val_loss": first.get("eval_val_loss"),
               **{f"{split}_loss": round(v, 4) for split, v in final.items()},
               "split_sizes": {k: len(v) for k, v in splits.items()}, "max_length": max_length}
    checkpoint = save_model(directory, model, tokenizer,
                            {"task": "instruct", "step": result.steps,
                             "chat_template": prompt_format.template, "results": results},
                            source=init_dir)
    answers = answer_test_split(directory, model, tokenizer, splits["test"], settings,
                                prompt_format)
    if answers:
        results["test_responses"] = str(directory / RESPONSES_FILE)
        for item in answers[:3]:
            log(f"\n### Instruction: {item['instruction']}"
                + (f"\n### Input: {item['input']}" if item["input"] else "")
                + f"\n### Expected: {item['output']}\n### Model: {item['model_response']}")
    write_results(directory, results)
    log("loss: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items())
        + f" (val at start {results['initial_val_loss']}); {result.steps} steps in "
          f"{result.seconds:.1f} s; checkpoint {checkpoint}")
    return results
