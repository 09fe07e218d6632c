"""Pretraining a GPT from scratch: the loop behind `python train.py`.

    settings -> text -> tokenizer -> token ids -> model + AdamW -> steps, evaluations, checkpoints

One step: draw `grad_accum` random batches, run forward and backward on each (the gradients add
up), clip the global gradient norm, set the learning rate of this step (warmup + cosine), and
take an AdamW step. Every `eval_interval` steps: mean loss over `eval_iters` batches of train
and val, a text sample, and a checkpoint (`latest/`, and `best/` when val improved).

Exact resume: all randomness of step s (its batches, its dropout masks) comes from generators
seeded by (seed, s), and the learning rate is a function of s. A checkpoint holds the weights,
the optimizer's moments and the step, so a resumed run computes bit for bit what an
uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

import autograd.random
from autograd import no_grad
from autograd.optim import AdamW, clip_grad_norm, decay_groups, lr_schedule
from autograd.parallel import DataParallel, default_threads, split_batch
from bpe import CharTokenizer, Tokenizer, load_tokenizer
from gpt.core.config import PRESETS, GPTConfig
from gpt.core.generate import SamplingParams, generate
from gpt.core.model import GPT
from gpt.data.corpora import fetch, load_text_splits
from gpt.data.tokens import TokenData
from gpt.errors import GPTError
from gpt.io.checkpoint import (load_pretrained, load_tokenizer_from, load_training_state,
                               resolve_checkpoint, save_checkpoint)
from gpt.io.files import cache_dir

SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class TrainingError(GPTError, RuntimeError):
    """Training cannot go on (bad settings, non-finite loss); the message says why."""


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
    max_iters: int = 3000           # the defaults: ~15 minutes of the default model on 2 cores
    lr: float = 4e-3                # tuned for the small default model (see the README)
    min_lr: float = 4e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
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
        key = hashlib.sha256(train_text.encode("utf-8")).hexdigest()[:24]
        path = cache_dir(settings.data_dir) / "tokenizers" / f"bpe-{settings.vocab_size}-{key}.json"
        if path.is_file():
            return load_tokenizer(path)
        tokenizer = Tokenizer.train(train_text, settings.vocab_size, pattern="gpt4",
                                    special_tokens=["<|endoftext|>"], progress=settings.progress)
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


# Streams of randomness, so that batches, dropout and evaluation never share a generator.
BATCHES, TRAIN_EVAL, VAL_EVAL, DROPOUT = range(4)


def step_rng(seed: int, step: int, stream: int = BATCHES, *keys: int) -> np.random.Generator:
    """The generator for one step's randomness: a pure function of (seed, step, stream, keys)."""
    return np.random.default_rng([seed, stream, step, *keys])


def backward_batches(parallel: DataParallel, loss_fn, batches: list[tuple], params: list,
                     seed: int, step: int) -> float:
    """Forward and backward of one step's micro-batches, each split over the threads.

    Gradients add up in the parameters' `.grad` as those of the mean loss over all the step's
    sequences: every micro-batch weighs the same, and within one, each thread's shard weighs
    by its number of sequences. Shard i of micro-batch m draws its dropout masks from
    step_rng(seed, step, DROPOUT, m, i), so the step is repeatable whatever the threads do.
    Returns that mean loss.
    """
    total = 0.0
    for micro, batch in enumerate(batches):
        n = len(batch[0])
        slices = split_batch(n, parallel.threads)
        weights = [(sl.stop - sl.start) / (n * len(batches)) for sl in slices]
        rngs = [step_rng(seed, step, DROPOUT, micro, i) for i in range(len(slices))]
        losses = parallel.backward(loss_fn, [tuple(a[sl] for a in batch) for sl in slices],
                                   params, weights, rngs)
        total += sum(w * loss for w, loss in zip(weights, losses))
    return total


def estimate_loss(model: GPT, data: TokenData, batch_size: int, eval_iters: int, seed: int,
                  parallel: DataParallel | None = None) -> dict[str, float]:
    """Mean loss over `eval_iters` batches of each split; the same batches at every call."""
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
        losses = []
        for _ in range(eval_iters):
            x, y = data.get_batch(split, batch_size, block, rng)
            shards = [(x[sl], y[sl]) for sl in split_batch(len(x), threads)]
            sums = parallel.map(shard_loss, shards) if parallel else [shard_loss(shards[0])]
            losses.append(sum(sums) / len(x))
        out[split] = float(np.mean(losses))
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
    step: int = 0
    best_val: float = math.inf
    log: Callable[[str], None] = print
    history: list[dict] = field(default_factory=list)
    parallel: DataParallel | None = None     # the thread pool, while train() runs

    # -- persistence -------------------------------------------------------------------------

    def train_state(self) -> dict:
        return {"step": self.step, "best_val_loss": self.best_val,
                "settings": dataclasses.asdict(self.settings)}

    def save(self, which: str = "latest") -> Path:
        return save_checkpoint(self.directory / which, self.model, self.tokenizer,
                               self.optimizer.state_dict(), self.train_state())

    def append_metrics(self, row: dict) -> None:
        self.history.append(row)
        with open(self.directory / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def create_run_directory(settings, default_name: str, hint: str = "") -> Path:
    """Create `settings.out_dir/(settings.run_name or default_name)` and write settings.json
    into it; a directory that already holds a run is refused (`hint` says what else to do)."""
    directory = Path(settings.out_dir).expanduser() / (settings.run_name or default_name)
    if (directory / SETTINGS_FILE).exists():
        raise TrainingError(f"run directory {directory} already holds a run; {hint}choose "
                            f"another --run-name")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings), indent=2)
                                           + "\n", encoding="utf-8")
    return directory


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
    run = Run(directory, settings, model, tokenizer, data, optimizer, step, best_val, log)
    run.history = _read_metrics(directory / METRICS_FILE, up_to_step=step)
    _rewrite_metrics(directory / METRICS_FILE, run.history)
    return run


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """Rows logged up to `up_to_step` (a resumed run drops what came after its checkpoint)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue                       # a line cut short by a crash
        if row.get("step", 0) <= up_to_step:
            rows.append(row)
    return rows


def _rewrite_metrics(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def train(run: Run) -> dict:
    """Train until max_iters (or stop_after); returns a summary dict."""
    s, model, optimizer = run.settings, run.model, run.optimizer
    block = model.config.block_size
    schedule = lr_schedule("cosine", s.lr, s.warmup_iters, s.max_iters, s.min_lr)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = s.batch_size * block * s.grad_accum
    last_step = min(s.max_iters, s.stop_after) if s.stop_after is not None else s.max_iters
    run.log(f"run directory: {run.directory}")
    run.log(f"model: {model.num_parameters():,} parameters ({model.config.n_layer} layers, "
            f"{model.config.n_head} heads, n_embd {model.config.n_embd}, context {block}, "
            f"vocabulary {model.config.vocab_size}); {len(run.data.train):,} train tokens, "
            f"{len(run.data.val):,} val tokens; {tokens_per_step:,} tokens per step")
    model.train()
    started = time.perf_counter()
    smoothed_speed = None
    bar = tqdm(total=last_step, initial=run.step, desc="training", unit="step",
               disable=not s.progress, dynamic_ncols=True)
    with GracefulInterrupt() as interrupt, DataParallel(s.threads) as parallel:
        run.parallel = parallel
        while run.step < last_step and not interrupt.requested:
            step = run.step
            t0 = time.perf_counter()
            lr = schedule(step)
            optimizer.lr = lr
            batch_rng = step_rng(s.seed, step, BATCHES)
            batches = [run.data.get_batch("train", s.batch_size, block, batch_rng)
                       for _ in range(s.grad_accum)]
            model.zero_grad()
            loss_value = backward_batches(parallel, model.loss, batches, params, s.seed, step)
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainingError(
                    f"the loss became {loss_value} at step {step}; stopping. The last good "
                    f"checkpoint is in {run.directory / 'latest'}. Try a lower --lr or "
                    f"--grad-clip.")
            grad_norm = clip_grad_norm(params, s.grad_clip) if s.grad_clip > 0 else float("nan")
            optimizer.step(parallel)
            run.step = step + 1
            dt = time.perf_counter() - t0
            speed = tokens_per_step / dt
            smoothed_speed = speed if smoothed_speed is None else 0.9 * smoothed_speed + 0.1 * speed
            run.append_metrics({"step": run.step, "loss": round(loss_value, 5), "lr": lr,
                                "grad_norm": round(grad_norm, 4), "tokens_per_sec": round(speed),
                                "time": round(time.perf_counter() - started, 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{smoothed_speed:,.0f}")
            if run.step % s.eval_interval == 0 and run.step < last_step:
                evaluate_and_checkpoint(run, bar)
        bar.close()
        interrupted = interrupt.requested
        if interrupted:
            run.log(f"interrupted at step {run.step}: saving a checkpoint (Ctrl-C again to "
                    f"quit without saving)...")
        final = evaluate_and_checkpoint(run, None)
    run.parallel = None
    plot_metrics(run.directory)
    summary = {"step": run.step, "train_loss": final["train"], "val_loss": final["val"],
               "best_val_loss": run.best_val, "interrupted": interrupted,
               "minutes": (time.perf_counter() - started) / 60, "run_directory": str(run.directory)}
    run.log(f"step {run.step}: train loss {final['train']:.4f}, val loss {final['val']:.4f} "
            f"(best {run.best_val:.4f}); checkpoints in {run.directory}")
    if interrupted:
        run.log(f"resume with: python train.py --resume {run.directory}")
    return summary


class GracefulInterrupt:
    """Turn the first Ctrl-C into a request to stop after the current step.

    Stopping in the middle of an optimizer step would save half-updated weights; so the loop
    finishes the step, saves a checkpoint and exits. A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def evaluate_and_checkpoint(run: Run, bar) -> dict[str, float]:
    s = run.settings
    losses = estimate_loss(run.model, run.data, s.batch_size, s.eval_iters, s.seed,
                           run.parallel)
    improved = losses["val"] < run.best_val
    if improved:
        run.best_val = losses["val"]
    run.append_metrics({"step": run.step, "eval_train_loss": round(losses["train"], 5),
                        "eval_val_loss": round(losses["val"], 5)})
    sample = sample_text(run.model, run.tokenizer, s.sample_prompt, s.sample_tokens,
                         seed=s.seed + run.step) if s.sample_tokens > 0 else ""
    message = (f"step {run.step}: train loss {losses['train']:.4f}, val loss "
               f"{losses['val']:.4f}" + (" (best)" if improved else ""))
    if sample:
        message += "\n--- sample ---\n" + sample.strip() + "\n--------------"
    (bar.write if bar is not None else run.log)(message)
    run.save("latest")
    if improved:
        run.save("best")
    return losses


def plot_metrics(directory: Path) -> Path | None:
    """loss.png from metrics.jsonl, when matplotlib is installed (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = _read_metrics(directory / METRICS_FILE, up_to_step=10 ** 12)
    steps = [r["step"] for r in rows if "loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(steps, losses, alpha=0.35, label="train loss (per step)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_train_loss"] for r in evals], "o-",
                label="train loss (eval)")
        ax.plot([r["step"] for r in evals], [r["eval_val_loss"] for r in evals], "o-",
                label="val loss (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = directory / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

