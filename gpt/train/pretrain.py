"""Pretraining a GPT from scratch: what `python train.py` runs.

    settings -> text -> tokenizer -> token ids -> model + AdamW -> the loop (gpt.train.loop)

A pretraining step (the loop's `Task`): draw `grad_accum` random batches of `batch_size`
windows from the training tokens (from step_rng(seed, step)), each a (x, y) pair of (B, T) token
ids, and the model's mean next-token loss on them. The schedule is a warmup and a cosine
decay. Every `eval_interval` steps: the mean loss (and bits per byte) over `eval_iters`
batches of train and val, a text sample, and a checkpoint (`latest/`, and `best/` when val
improved). A checkpoint holds the weights, the optimizer's moments and the step, so a resumed
run computes bit for bit what an uninterrupted one would have (see gpt.train.loop).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import autograd.random
from autograd import no_grad
from autograd.optim import AdamW, decay_groups
from autograd.parallel import DataParallel, default_threads, split_batch
from bpe import CharTokenizer, Tokenizer, load_tokenizer
from gpt.chat.templates import CHAT_TOKENS
from gpt.core.config import PRESETS, GPTConfig
from gpt.core.generate import SamplingParams, generate
from gpt.core.model import GPT
from gpt.data.corpora import fetch, load_text_splits
from gpt.data.tokens import TokenData
from gpt.io.checkpoint import (load_pretrained, load_tokenizer_from, load_training_state,
                               resolve_checkpoint, save_checkpoint)
from gpt.io.files import cache_dir
from gpt.train.evaluate import bits_per_byte, token_byte_lengths
from gpt.train.loop import (BATCHES, METRICS_FILE, SETTINGS_FILE, TRAIN_EVAL, VAL_EVAL,
                            LoopConfig, MetricsLog, Task, TrainingError, create_run_directory,
                            step_rng, train_loop, training_threads)


@dataclass
class TrainSettings:
    """Everything that defines a pretraining run (saved as settings.json in the run directory)."""
    # data and tokenizer
    data: str = "tinystories"
    data_dir: str | None = None
    tokenizer: str = "bpe"          # "bpe" (train one), "char", "gpt2", or a tokenizer file/dir
    vocab_size: int = 4096          # for a trained BPE
    # model
    preset: str | None = None       # start from a GPTConfig preset; the fields below override it
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float = 0.0
    bias: bool = True
    init: str | None = None         # start from a pretrained checkpoint instead of random weights
    # optimisation
    batch_size: int = 16
    grad_accum: int = 1
    max_iters: int = 2500           # with chat_iters: ~15 minutes of the default model on 2 cores
    lr: float = 4e-3                # tuned for the small default model (see the README)
    min_lr: float = 4e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # then the chat stage: fine-tuning on conversations into a storyteller (gpt.finetune.stories)
    chat_iters: int = 500           # its steps (0: none); about the last 2.5 of the 15 minutes
    chat_lr: float = 1e-3           # its peak learning rate (warmup, then cosine to 0)
    # evaluation, output
    eval_interval: int = 250
    eval_iters: int = 20
    sample_tokens: int = 120
    sample_prompt: str = ""
    out_dir: str = "runs"
    run_name: str | None = None
    seed: int = 1337
    threads: int = 0                # forward/backward threads (0: one per core); part of the run
    stop_after: int | None = None   # end (with a checkpoint) after this step, as if interrupted
    progress: bool = True

    def validate(self) -> None:
        if self.threads < 0:
            raise TrainingError(f"--threads must be >= 0 (0: one per core), got {self.threads}")
        for name in ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters",
                     "vocab_size"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got "
                                    f"{getattr(self, name)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise TrainingError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if not 0 <= self.min_lr <= self.lr:
            raise TrainingError(f"need 0 <= min_lr <= lr, got {self.min_lr} and {self.lr}")
        if self.chat_iters < 0 or not self.chat_lr > 0:
            raise TrainingError(f"need --chat-iters >= 0 and --chat-lr > 0, got "
                                f"{self.chat_iters} and {self.chat_lr}")
        if self.warmup_iters > self.max_iters:
            raise TrainingError(f"warmup_iters ({self.warmup_iters}) exceeds max_iters "
                                f"({self.max_iters})")


# ----------------------------------------------------------------------------------------------
# Building the pieces


def build_tokenizer(settings: TrainSettings, train_text: str, val_text: str):
    """The run's tokenizer: trained on the training text (cached), or loaded."""
    kind = settings.tokenizer
    if kind == "char":
        return CharTokenizer.train(train_text + val_text, special_tokens=["<|endoftext|>"])
    if kind == "gpt2":
        return Tokenizer.from_gpt2(fetch("gpt2-encoder.json", data_dir=settings.data_dir),
                                   fetch("gpt2-vocab.bpe", data_dir=settings.data_dir))
    if kind == "bpe":
        # <|user|>, <|assistant|>, <|end|>: the chat stage's turn tokens (gpt.chat.templates)
        specials = ["<|endoftext|>", *CHAT_TOKENS]
        digest = hashlib.sha256(train_text.encode("utf-8"))
        digest.update("\0".join(specials).encode("utf-8"))     # a new set: a new tokenizer
        key = digest.hexdigest()[:24]
        path = cache_dir(settings.data_dir) / "tokenizers" / f"bpe-{settings.vocab_size}-{key}.json"
        if path.is_file():
            return load_tokenizer(path)
        tokenizer = Tokenizer.train(train_text, settings.vocab_size, pattern="gpt4",
                                    special_tokens=specials, progress=settings.progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(path)
        return tokenizer
    path = Path(kind).expanduser()
    if path.is_dir():
        tokenizer = load_tokenizer_from(path)
        if tokenizer is None:
            raise TrainingError(f"no tokenizer files in {path}")
        return tokenizer
    if path.is_file():
        return load_tokenizer(path)
    raise TrainingError(f"--tokenizer {kind!r}: expected 'bpe', 'char', 'gpt2', or an existing "
                        f"tokenizer file or directory")


# The model shape when neither a preset nor sizes are given: sized for a 2-core CPU budget.
DEFAULT_MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=128)


def model_config(settings: TrainSettings, vocab_size: int) -> GPTConfig:
    base = dict(PRESETS[settings.preset]) if settings.preset else dict(DEFAULT_MODEL)
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        if getattr(settings, name) is not None:
            base[name] = getattr(settings, name)
    base.update(vocab_size=vocab_size, dropout=settings.dropout, bias=settings.bias)
    try:
        return GPTConfig(**base)
    except ValueError as error:
        raise TrainingError(str(error)) from None


def estimate_loss(model: GPT, data: TokenData, batch_size: int, eval_iters: int, seed: int,
                  parallel: DataParallel | None = None, token_bytes: np.ndarray | None = None
                  ) -> dict[str, float]:
    """{"train_loss", "val_loss"}: the mean loss over `eval_iters` batches of each split, the
    same batches at every call; with `token_bytes` (gpt.train.evaluate.token_byte_lengths) also
    "train_bpb", "val_bpb": bits per byte of those batches."""
    was_training = model.training
    model.eval()
    block = model.config.block_size
    threads = parallel.threads if parallel is not None else 1

    def shard_loss(shard: tuple) -> float:
        with no_grad():                   # per thread: grad mode is thread-local
            return model.loss(*shard).item() * len(shard[0])

    out = {}
    for split in ("train", "val"):
        rng = step_rng(seed, 0, TRAIN_EVAL if split == "train" else VAL_EVAL)
        losses, total_loss, n_bytes = [], 0.0, 0
        for _ in range(eval_iters):
            x, y = data.get_batch(split, batch_size, block, rng)
            shards = [(x[sl], y[sl]) for sl in split_batch(len(x), threads)]
            sums = parallel.map(shard_loss, shards) if parallel else [shard_loss(shards[0])]
            losses.append(sum(sums) / len(x))
            total_loss += sum(sums) * block           # each row's mean loss covers T tokens
            if token_bytes is not None:
                n_bytes += int(token_bytes[y].sum())
        out[f"{split}_loss"] = float(np.mean(losses))
        if token_bytes is not None:
            out[f"{split}_bpb"] = bits_per_byte(total_loss, n_bytes)
    model.train(was_training)
    return out


def sample_text(model: GPT, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> str:
    eot = getattr(tokenizer, "eot_id", None)
    ids = tokenizer.encode(prompt, allowed_special="all") if prompt else \
        [eot if eot is not None else 0]
    stops = (eot,) if eot is not None else ()
    new = generate(model, ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.8,
                                              top_k=40, seed=seed, stop_tokens=stops,
                                              vocab_size=tokenizer.vocab_size))
    return prompt + tokenizer.decode(new)


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """A run directory: settings.json, metrics.jsonl, loss.png, latest/ and best/."""
    directory: Path
    settings: TrainSettings
    model: GPT
    tokenizer: Any
    data: TokenData
    optimizer: AdamW
    metrics: MetricsLog
    step: int = 0
    best_val: float = math.inf
    log: Callable[[str], None] = print

    def train_state(self) -> dict:
        return {"step": self.step, "best_val_loss": self.best_val,
                "settings": dataclasses.asdict(self.settings)}

    def save(self, which: str = "latest") -> Path:
        return save_checkpoint(self.directory / which, self.model, self.tokenizer,
                               self.optimizer.state_dict(), self.train_state())


def prepare_run(settings: TrainSettings, resume: str | os.PathLike | None = None,
                log: Callable[[str], None] = print) -> Run:
    """Set up a new run from `settings`, or reopen the run directory `resume`."""
    optimizer_state = None
    step, best_val = 0, math.inf
    if resume is not None:
        directory = Path(resume).expanduser()
        try:
            saved = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingError(f"cannot resume: {directory / SETTINGS_FILE} not found (is "
                                f"{directory} a run directory written by train.py?)") from None
        except json.JSONDecodeError as error:
            raise TrainingError(f"cannot resume: {directory / SETTINGS_FILE} is corrupt: "
                                f"{error}") from None
        # The saved settings define the run; only when to stop and how to show it may change.
        overrides = {"stop_after": settings.stop_after, "progress": settings.progress}
        settings = TrainSettings(**{**saved, **overrides})
        latest = directory / "latest"
        if not (latest.exists() or (directory / "latest.old").exists()):
            raise TrainingError(f"cannot resume: {directory} has no latest/ checkpoint yet")
        ckpt = resolve_checkpoint(latest if latest.exists() else directory / "latest.old")
        optimizer_state, state = load_training_state(ckpt)
        if state is None or optimizer_state is None:
            raise TrainingError(f"cannot resume: {ckpt} is not a training checkpoint "
                                f"(no optimizer or train state)")
        step, best_val = int(state["step"]), float(state["best_val_loss"])
    settings.validate()
    if settings.threads == 0:         # fixed now, so that a resumed run shards batches alike
        settings.threads = default_threads()

    splits = load_text_splits(settings.data, data_dir=settings.data_dir)
    if resume is not None:
        tokenizer = load_tokenizer_from(ckpt)
    elif settings.init is not None and settings.tokenizer == "bpe":
        tokenizer = load_tokenizer_from(resolve_checkpoint(settings.init))
        if tokenizer is None:
            raise TrainingError(f"--init {settings.init}: the checkpoint has no tokenizer; "
                                f"pass --tokenizer")
    else:
        tokenizer = build_tokenizer(settings, splits.train, splits.val)
    data = TokenData.from_texts(splits.train, splits.val, tokenizer, allowed_special="all",
                                data_dir=settings.data_dir, progress=settings.progress)

    if resume is not None:
        model = load_pretrained(ckpt)
    elif settings.init is not None:
        # --block-size with --init crops the pretrained position embedding (see load_pretrained).
        crop = {"block_size": settings.block_size} if settings.block_size else {}
        model = load_pretrained(settings.init, dropout=settings.dropout, **crop)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise TrainingError(f"--init model has a vocabulary of {model.config.vocab_size}, "
                                f"the tokenizer {tokenizer.vocab_size}")
    else:
        autograd.random.manual_seed(settings.seed)
        model = GPT(model_config(settings, tokenizer.vocab_size))
    for split in ("train", "val"):
        if len(data.split(split)) < model.config.block_size + 1:
            raise TrainingError(
                f"the {split} split has {len(data.split(split))} tokens, fewer than "
                f"block_size + 1 = {model.config.block_size + 1}: use a smaller --block-size "
                f"or more text")

    optimizer = AdamW(decay_groups(model, settings.weight_decay), lr=settings.lr,
                      betas=(settings.beta1, settings.beta2))
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError) as error:
            raise TrainingError(f"cannot resume: the optimizer state in {ckpt} does not fit "
                                f"the model: {error}") from None

    if resume is None:
        directory = create_run_directory(
            settings, time.strftime("%Y%m%d-%H%M%S"),
            hint="pass --resume with it to continue that run, or ")
    metrics = MetricsLog.resume(directory / METRICS_FILE, up_to_step=step)
    return Run(directory, settings, model, tokenizer, data, optimizer, metrics, step, best_val,
               log)


def train(run: Run) -> dict:
    """Train until max_iters (or stop_after, or Ctrl-C); returns a summary dict."""
    s, model = run.settings, run.model
    block = model.config.block_size
    tokens_per_step = s.batch_size * block * s.grad_accum
    run.log(f"run directory: {run.directory}")
    run.log(f"model: {model.num_parameters():,} parameters ({model.config.n_layer} layers, "
            f"{model.config.n_head} heads, n_embd {model.config.n_embd}, context {block}, "
            f"vocabulary {model.config.vocab_size}); {len(run.data.train):,} train tokens, "
            f"{len(run.data.val):,} val tokens; {tokens_per_step:,} tokens per step")
    token_bytes = token_byte_lengths(run.tokenizer)
    config = LoopConfig(
        max_steps=s.max_iters, lr=s.lr, schedule="cosine", warmup_steps=s.warmup_iters,
        min_lr=s.min_lr, grad_clip=s.grad_clip, eval_interval=s.eval_interval,
        stop_after=s.stop_after, seed=s.seed, progress=s.progress,
        failure_hint=f"The last good checkpoint is in {run.directory / 'latest'}. Try a lower "
                     f"--lr or --grad-clip.")

    def batches(step: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = step_rng(s.seed, step, BATCHES)
        return [run.data.get_batch("train", s.batch_size, block, rng)
                for _ in range(s.grad_accum)]

    def checkpoint_and_sample(step: int, losses: dict[str, float]) -> str:
        run.step = step
        improved = losses["val_loss"] < run.best_val
        if improved:
            run.best_val = losses["val_loss"]
        run.save("latest")
        if improved:
            run.save("best")
        sample = sample_text(model, run.tokenizer, s.sample_prompt, s.sample_tokens,
                             seed=s.seed + step) if s.sample_tokens > 0 else ""
        return (" (best)" if improved else "") + \
            (f"\n--- sample ---\n{sample.strip()}\n--------------" if sample else "")

    started = time.perf_counter()
    with training_threads(s.threads) as parallel:
        def evaluate(step: int) -> dict[str, float]:
            return estimate_loss(model, run.data, s.batch_size, s.eval_iters, s.seed, parallel,
                                 token_bytes)
        task = Task(batches, model.loss, evaluate, checkpoint_and_sample)
        result = train_loop(model, run.optimizer, task, config, run.metrics,
                            start_step=run.step, parallel=parallel, log=run.log)
    run.step = result.steps
    final = result.final
    summary = {"step": run.step, "train_loss": final["train_loss"],
               "val_loss": final["val_loss"], "val_bpb": final["val_bpb"],
               "best_val_loss": run.best_val, "interrupted": result.interrupted,
               "minutes": (time.perf_counter() - started) / 60,
               "run_directory": str(run.directory)}
    run.log(f"best val loss {run.best_val:.4f}; checkpoints in {run.directory}")
    if result.interrupted:
        run.log(f"resume with: python train.py --resume {run.directory}")
    return summary
