"""Fine-tuning a pretrained GPT: what the four tasks share (the command line is gpt.finetune.cli).

    python train.py classify --init runs/pretrain      # spam classifier (gpt.finetune.classify)
    python train.py instruct --init runs/pretrain      # instruction following (gpt.finetune.instruct)
    python train.py dpo --init runs/instruct-...       # preference tuning (gpt.finetune.dpo)
    python train.py chat --init runs/pretrain          # a storyteller (gpt.finetune.stories)

Pretraining reads an endless stream of text windows; fine-tuning reads a small set of *records*
(an SMS and its label, an instruction and its answer, a prompt and two answers, a conversation),
a few epochs over them. Each task module turns its records into batches and a loss; this module
holds the rest, the same for all four:

- `load_base`: the pretrained model and its tokenizer from a checkpoint directory;
- `select_trainable` / `apply_lora` (gpt.finetune.lora): which parameters learn;
- `fit`: AdamW over the trainable parameters only and the training loop that pretraining
  runs too (`gpt.train.loop.train_loop`: warmup + schedule, gradient clipping, an evaluation
  every `eval_interval` steps and one at the start, metrics.jsonl, Ctrl-C to stop early and
  still save; given the optimizer and step of a checkpoint, it resumes a run exactly);
- `save_model`: LoRA adapters are merged into the weights (`gpt.finetune.lora.merge_lora`) and the
  checkpoint is an ordinary GPT directory that `gpt.load_pretrained`, `chat.py` and
  `python train.py --init` all open.

Both model families fine-tune: GPT-2 (gpt.core.model) and the Llama family (gpt.core.llama:
Llama 3, SmolLM2, Qwen3, from Hugging Face or trained here). For the latter LoRA adapts the
attention and MLP projections (`Llama.lora_targets`), and a checkpoint fine-tuned from a
Hugging Face directory keeps that directory's tokenizer files, chat template, generation
settings and special token ids (`SOURCE_FILES`), so that it chats and exports as its source does.

A fine-tuning run directory holds settings.json, metrics.jsonl, loss.png, results.json (the
final evaluation) and the checkpoint `latest/`, plus what the task adds (the classifier head,
the test-split responses).

Batches are drawn epoch by epoch: epoch e visits the training records in the order of a
permutation seeded by (seed, e), in `len(train) // batch_size` full batches; dropout masks of
step s come from (seed, s) (see gpt.train.loop). A run is thus a function of its settings.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import autograd.random
from autograd import Tensor, no_grad
from autograd.nn import Module
from autograd.optim import AdamW, decay_groups
from autograd.parallel import DataParallel
from gpt.chat.templates import read_generation_config
from gpt.core.llama import Llama
from gpt.core.model import GPT
from gpt.finetune.lora import LoRALinear, apply_lora, merge_lora
from gpt.io.checkpoint import (CONFIG_FILE, TOKENIZER_FILE, load_pretrained, load_tokenizer_from,
                               resolve_checkpoint, save_checkpoint)
from gpt.io.files import atomic_write
from gpt.train.loop import (METRICS_FILE, LoopConfig, LoopResult, MetricsLog, Task,
                            TrainingError, create_run_directory, step_rng, train_loop)

RESULTS_FILE = "results.json"
# Per task: the data it reads by default, and defaults that differ from FinetuneSettings'.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": dict(data="sms-spam", epochs=5, lr=5e-4, eval_interval=50),
    "instruct": dict(data="instructions", epochs=2, lr=3e-4, eval_interval=50),
    "dpo": dict(data="instructions-preference", epochs=1, lr=5e-5, eval_interval=25),
    # steps, not epochs: the conversations made are as many as the steps will see
    "chat": dict(data="tinystories", max_iters=600, batch_size=16, lr=1e-3, schedule="cosine",
                 warmup_iters=20, eval_interval=100, max_new_tokens=200, threads=0),
}
TASKS = tuple(TASK_DEFAULTS)      # python train.py classify|instruct|dpo|chat
IGNORE_INDEX = -100          # the target value F.cross_entropy skips
# What a checkpoint fine-tuned from a Hugging Face directory keeps of it (those it has): the
# tokenizer's files, the chat template, the recommended generation settings (stop tokens).
SOURCE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                "merges.txt", "special_tokens_map.json", "added_tokens.json",
                "chat_template.jinja", "chat_template.json", "generation_config.json")
# ...and the special token ids of its config.json (or, where that has none, of its
# generation_config.json).
SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class FinetuneSettings:
    """Everything that defines a fine-tuning run (saved as settings.json in its directory).

    Task-specific fields are ignored by the other tasks: `trainable` (classify: "last-K" trains
    the last K blocks and the final LayerNorm, "all" everything, "lora" LoRA adapters; the new
    head always trains), `mask_prompt`, `max_new_tokens`, `test_responses` (instruct), `beta`
    (dpo), `threads` (chat: cores that share each batch, 0 one per core; the other tasks run
    in one thread). LoRA is on when `lora_rank` is set (for classify: with trainable="lora").
    """
    task: str
    init: str                           # checkpoint (or run directory) to start from
    data: str | None = None             # named corpus or local file; None: the task's default
    data_dir: str | None = None
    epochs: int = 1
    max_iters: int | None = None        # optimizer steps; None: epochs * steps per epoch
    batch_size: int = 8
    lr: float = 1e-4
    schedule: str = "constant"          # or "cosine" (down to min_lr)
    min_lr: float = 0.0
    warmup_iters: int = 0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    eval_interval: int = 50
    eval_iters: int | None = 5          # batches per split in the periodic evaluations (None: all)
    max_length: int | None = None       # tokens per example (None: the model's context)
    lora_rank: int | None = None
    lora_alpha: float | None = None     # None: equal to the rank (scaling 1)
    trainable: str = "all"
    mask_prompt: bool = False
    max_new_tokens: int = 100
    test_responses: int | None = None   # answer this many test records (None: all, 0: none)
    beta: float = 0.1
    threads: int = 1
    out_dir: str = "runs"
    run_name: str | None = None
    seed: int = 123
    progress: bool = True

    def validate(self) -> None:
        if self.task not in TASKS:
            raise TrainingError(f"unknown fine-tuning task {self.task!r}; choose one of "
                                f"{', '.join(TASKS)}")
        for name in ("epochs", "batch_size", "eval_interval"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got "
                                    f"{getattr(self, name)}")
        for name in ("max_iters", "eval_iters", "max_length", "lora_rank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise TrainingError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not self.lr > 0:
            raise TrainingError(f"--lr must be positive, got {self.lr}")
        if self.schedule not in ("constant", "cosine"):
            raise TrainingError(f"--schedule must be 'constant' or 'cosine', got "
                                f"{self.schedule!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainingError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.task == "classify":
            parse_trainable(self.trainable)
            if self.lora_rank is not None and self.trainable != "lora":
                raise TrainingError("--lora-rank needs --trainable lora for classification")
        if self.task == "chat" and self.lora_rank is not None:
            raise TrainingError("chat fine-tuning trains the weights themselves (it saves a "
                                "plain checkpoint as it goes): drop --lora-rank")
        if self.task == "dpo" and not self.beta > 0:
            raise TrainingError(f"--beta must be positive, got {self.beta}")
        if self.threads < 0:
            raise TrainingError(f"--threads must be >= 0 (0: one per core), got {self.threads}")
        if self.test_responses is not None and self.test_responses < 0:
            raise TrainingError(f"--test-responses must be >= 0, got {self.test_responses}")

    @property
    def uses_lora(self) -> bool:
        return self.trainable == "lora" if self.task == "classify" else self.lora_rank is not None


def parse_trainable(spec: str) -> tuple[str, int]:
    """("last", K) for "last-K", ("all", 0), ("lora", 0); a TrainingError for anything else."""
    if spec in ("all", "lora"):
        return spec, 0
    match = re.fullmatch(r"last-(\d+)", spec)
    if match and int(match.group(1)) >= 0:
        return "last", int(match.group(1))
    raise TrainingError(f"--trainable {spec!r}: expected 'last-K' (K a number of final blocks, "
                        f"e.g. last-1), 'all' or 'lora'")


# ----------------------------------------------------------------------------------------------
# The model


def load_base(settings: FinetuneSettings) -> tuple[GPT | Llama, Any, Path]:
    """The pretrained model, its tokenizer and the checkpoint directory they came from.

    Fine-tuning a GPT pads with the end-of-text token and teaches the model to end with it,
    so its tokenizer must have one. A Llama-family model ends its replies with its chat
    template's end-of-turn token instead (Llama 3's tokenizer has no <|endoftext|>).
    """
    directory = resolve_checkpoint(settings.init)
    tokenizer = load_tokenizer_from(directory)
    if tokenizer is None:
        raise TrainingError(f"--init {settings.init}: {directory} has no tokenizer files; "
                            f"fine-tuning needs the tokenizer the model was trained with")
    model = load_pretrained(directory, dropout=settings.dropout)
    if getattr(tokenizer, "eot_id", None) is None and not isinstance(model, Llama):
        raise TrainingError(f"the tokenizer of {directory} has no <|endoftext|> token, which "
                            f"fine-tuning uses for padding and to end responses")
    if model.config.vocab_size < tokenizer.vocab_size:
        raise TrainingError(f"{directory}: the model's vocabulary ({model.config.vocab_size}) "
                            f"is smaller than its tokenizer's ({tokenizer.vocab_size})")
    return model, tokenizer, directory


def blocks_and_final_norm(model: GPT | Llama) -> tuple[list[Module], Module]:
    """The transformer blocks of a model, first to last, and the norm after them: GPT-2's `h`
    and `ln_f`, the Llama family's `layers` and `norm`."""
    if isinstance(model, Llama):
        return list(model.layers), model.norm
    return list(model.h), model.ln_f


def select_trainable(model: GPT | Llama, mode: str, last_k: int = 0) -> None:
    """Freeze all of `model` but what `mode` trains: "all"; "last" the last `last_k` blocks
    plus the final norm (chapter 6's choice: the last block adapts most easily, the early
    ones hold general features of language that a small labelled set should not overwrite)."""
    if mode == "all":
        model.requires_grad_(True)
        return
    if mode != "last":
        raise ValueError(f"select_trainable: unknown mode {mode!r}")
    model.requires_grad_(False)
    blocks, final_norm = blocks_and_final_norm(model)
    if last_k > len(blocks):
        raise TrainingError(f"--trainable last-{last_k}: the model has only {len(blocks)} "
                            f"blocks")
    for block in blocks[len(blocks) - last_k:]:
        block.requires_grad_(True)
    final_norm.requires_grad_(True)


def add_lora(model: GPT, settings: FinetuneSettings) -> list[str]:
    """Wrap the model's Linear layers in LoRA adapters (rank and alpha from the settings)."""
    rank = settings.lora_rank or 16
    alpha = settings.lora_alpha if settings.lora_alpha is not None else float(rank)
    return apply_lora(model, rank, alpha)


def start_run(model: GPT, settings: FinetuneSettings, log: Callable[[str], None]
              ) -> tuple[Path, dict[str, int]]:
    """Add LoRA adapters if the settings ask for them, create the run directory, and report
    what trains. Returns (run directory, parameter counts)."""
    if settings.uses_lora:
        autograd.random.manual_seed(settings.seed)      # the adapters' initial A matrices
        add_lora(model, settings)
    counts = count_parameters(model)
    directory = new_run_directory(settings)
    log(f"run directory: {directory}")
    lora = f" (LoRA rank {settings.lora_rank})" if settings.uses_lora else ""
    log(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,}{lora}")
    return directory, counts


def count_parameters(model: Module) -> dict[str, int]:
    """Trainable and total parameter counts (LoRA matrices included in both)."""
    params = model.parameters()
    return {"trainable": int(sum(p.size for p in params if p.requires_grad)),
            "total": int(sum(p.size for p in params))}


def export_gpt(model: GPT) -> GPT:
    """The model as a plain GPT: LoRA adapters folded into the weights (in place)."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        merge_lora(model)
    return model


def save_model(directory: Path, model: GPT | Llama, tokenizer, train_state: dict,
               source: Path | None = None) -> Path:
    """Merge any LoRA adapters and write `directory`/latest as an ordinary checkpoint.

    A Llama-family model fine-tuned from `source`, a Hugging Face directory, keeps that
    directory's files: the tokenizer's as they are (rather than our tokenizer.du.json, so the
    checkpoint stays in Hugging Face's layout), its chat template, generation_config.json (stop
    tokens, sampling), and the special token ids of its config.json (else of its
    generation_config.json). Llama 3's tokenizer, for one, has no <|endoftext|>, which is what
    a config.json of ours would otherwise name.
    """
    model = export_gpt(model)
    if source is None or not isinstance(model, Llama):
        return save_checkpoint(directory / "latest", model, tokenizer, None, train_state)
    kept = [source / name for name in SOURCE_FILES if (source / name).is_file()]
    hf_tokenizer = not (source / TOKENIZER_FILE).is_file()
    special_ids = {}
    for values in (read_generation_config(source),                 # config.json's win
                   json.loads((source / CONFIG_FILE).read_text(encoding="utf-8"))):
        special_ids.update({key: values[key] for key in SPECIAL_ID_KEYS if key in values})

    def keep_source_files(staging: Path) -> None:
        for path in kept:
            with open(path, "rb") as f, atomic_write(staging / path.name) as copy:
                shutil.copyfileobj(f, copy)
        config = json.loads((staging / CONFIG_FILE).read_text(encoding="utf-8"))
        with atomic_write(staging / CONFIG_FILE) as f:
            f.write((json.dumps({**config, **special_ids}, indent=2) + "\n").encode("utf-8"))

    return save_checkpoint(directory / "latest", model, None if hf_tokenizer else tokenizer,
                           None, train_state, add_files=keep_source_files)


# ----------------------------------------------------------------------------------------------
# Run directory and batching


def new_run_directory(settings: FinetuneSettings) -> Path:
    """Create `out_dir/run_name` (default: task and time) and write settings.json into it."""
    return create_run_directory(settings, f"{settings.task}-{time.strftime('%Y%m%d-%H%M%S')}")


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped: every step sees batch_size
    examples, so no step's gradient is a noisy average of a few); at least 1."""
    return max(1, n_train // batch_size)


def batch_indices(step: int, n_train: int, batch_size: int, seed: int) -> np.ndarray:
    """Which training records step `step` uses: a slice of its epoch's seeded permutation."""
    per_epoch = steps_per_epoch(n_train, batch_size)
    epoch, position = divmod(step, per_epoch)
    order = step_rng(seed, epoch).permutation(n_train)
    return order[position * batch_size:(position + 1) * batch_size]


def pad_rows(rows: Sequence[Sequence[int]], pad: int, length: int | None = None) -> np.ndarray:
    """Token lists as one (B, T) int64 array, each row filled up with `pad` to the longest
    (or to `length`)."""
    width = max(len(r) for r in rows) if length is None else length
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def split_by_fractions(items: list, fractions: Sequence[float]) -> list[list]:
    """Consecutive pieces of `items` with int(len * f) items for every fraction but the last,
    which takes the rest (the book's rounding)."""
    pieces, start = [], 0
    for fraction in fractions[:-1]:
        end = start + int(len(items) * fraction)
        pieces.append(items[start:end])
        start = end
    pieces.append(items[start:])
    return pieces


# ----------------------------------------------------------------------------------------------
# Training: the loop of gpt.train.loop, set up for fine-tuning


def fit(model: Module, settings: FinetuneSettings, n_train: int,
        step_loss: Callable[[np.ndarray], tuple[Tensor, dict[str, float]]],
        evaluate: Callable[[str, int | None], dict[str, float]],
        directory: Path, log: Callable[[str], None] = print, *,
        optimizer: AdamW | None = None, start_step: int = 0,
        checkpoint: Callable[[int, dict[str, float]], str] | None = None,
        parallel: DataParallel | None = None, stop_after: int | None = None) -> LoopResult:
    """Train the parameters of `model` that require a gradient (gpt.train.loop.train_loop).

    `step_loss(indices)` builds the batch of those training records and returns its loss (a
    scalar Tensor) and numbers to log (include "tokens": the batch's size in tokens).
    `evaluate(split, max_batches)` returns metrics of a split ("train" or "val"), e.g.
    {"loss": ..., "accuracy": ...}; it is called before the first step, every `eval_interval`
    steps with `eval_iters` batches and at the end, and logged as eval_train_* / eval_val_*.

    To resume a run (the chat stage of `python train.py` does): pass its `optimizer` with the
    saved state loaded and the `start_step` it reached; metrics.jsonl keeps the rows up to that
    step. `checkpoint(step, numbers)` saves the run after each evaluation (see
    gpt.train.loop.Task); `stop_after` ends the run early after that step, as a Ctrl-C would.
    With `parallel`, each batch is shared among its threads.
    """
    s = settings
    if n_train < 1:
        raise TrainingError("the training split is empty")
    total = s.max_iters or s.epochs * steps_per_epoch(n_train, s.batch_size)
    if optimizer is None:
        # Adam's default betas, as the book's fine-tuning uses (PyTorch's AdamW defaults).
        optimizer = AdamW(decay_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.999))

    def batches(step: int) -> list[tuple[np.ndarray]]:
        return [(batch_indices(step, n_train, s.batch_size, s.seed),)]

    def evaluate_splits(step: int) -> dict[str, float]:
        return {f"{split}_{name}": value for split in ("train", "val")
                for name, value in evaluate(split, s.eval_iters).items()}

    config = LoopConfig(max_steps=total, lr=s.lr, schedule=s.schedule,
                        warmup_steps=min(s.warmup_iters, total), min_lr=min(s.min_lr, s.lr),
                        grad_clip=s.grad_clip, eval_interval=s.eval_interval, eval_at_start=True,
                        stop_after=stop_after, seed=s.seed, progress=s.progress,
                        description=f"fine-tuning ({s.task})", failure_hint="Try a lower --lr.")
    metrics_path = directory / METRICS_FILE
    metrics = MetricsLog.resume(metrics_path, start_step) if start_step else \
        MetricsLog(metrics_path)
    return train_loop(model, optimizer, Task(batches, step_loss, evaluate_splits, checkpoint),
                      config, metrics, start_step=start_step, parallel=parallel, log=log)


@no_grad()
def evaluate_batches(model: Module, n_records: int, batch_size: int, max_batches: int | None,
                     batch_metrics: Callable[[np.ndarray], dict[str, tuple[float, float]]]
                     ) -> dict[str, float]:
    """Weighted means over the first `max_batches` batches (all if None) of a split, in order.

    `batch_metrics(indices)` returns {name: (sum, count)} for one batch, so that e.g. a loss is
    averaged over tokens and an accuracy over examples, whatever the batch sizes.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    try:
        n_batches = math.ceil(n_records / batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for b in range(n_batches):
            indices = np.arange(b * batch_size, min((b + 1) * batch_size, n_records))
            for name, (total, count) in batch_metrics(indices).items():
                entry = sums.setdefault(name, [0.0, 0.0])
                entry[0] += total
                entry[1] += count
    finally:
        model.train(was_training)
    return {name: total / count if count else float("nan")
            for name, (total, count) in sums.items()}


def write_results(directory: Path, results: dict) -> Path:
    path = directory / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path


def run_summary(fit_result: LoopResult, counts: dict[str, int]) -> dict[str, Any]:
    """What every task reports: steps, time and speed, trainable parameter counts."""
    return {"steps": fit_result.steps, "interrupted": fit_result.interrupted,
            "train_seconds": round(fit_result.seconds, 2),
            "seconds_per_step": round(fit_result.seconds_per_step, 4),
            "tokens_per_second": round(fit_result.tokens_per_second, 1),
            "trainable_parameters": counts["trainable"], "total_parameters": counts["total"]}

