"""Pretraining a GPT from scratch: what `python train.py` runs.

    settings -> text -> tokenizer -> token ids -> model + optimizer -> the loop (gpt.train.loop)

Two model families: "gpt2" (gpt.core.model.GPT, the book's model: learned positions,
LayerNorm, GELU, tied head) and "llama" (gpt.core.llama.Llama: rotary positions, RMSNorm,
optionally QK-norm, ReLU² or SwiGLU, no biases, an untied head, zero-initialised output
projections). Two optimizers: AdamW for every parameter, or Muon for the blocks' matrices with
AdamW for embeddings, head and gains (autograd.optim.muon_with_adamw). `TrainSettings`' own
defaults are the book's GPT-2 recipe; `RECIPES["modern"]` is what `python train.py` runs,
chosen by measurement (docs/model-and-training.md).

A pretraining step (the loop's `Task`): draw `grad_accum` random batches of `batch_size`
windows from the training tokens (from step_rng(seed, step)), each a (x, y) pair of (B, T) token
ids, and the model's mean next-token loss on them. The schedule is a warmup, then a cosine
decay or warmup-stable-decay, over `max_iters` steps or a wall-clock budget of `max_minutes`
(see gpt.train.loop). Every `eval_interval` steps: the mean loss (and bits per byte) over
`eval_iters` batches of train and val, a text sample, and a checkpoint (`latest/`, and `best/`
when val improved). A checkpoint holds the weights, the optimizer's moments and the step, so a
resumed run computes bit for bit what an uninterrupted one would have (see gpt.train.loop),
when its length is a number of steps.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import autograd.random
from autograd import no_grad
from autograd.optim import AdamW, MultiOptimizer, decay_groups, muon_with_adamw
from autograd.parallel import DataParallel, default_threads, split_batch
from bpe import CharTokenizer, Tokenizer, load_tokenizer
from gpt.chat.templates import CHAT_TOKENS
from gpt.core.config import PRESETS, GPTConfig
from gpt.core.generate import SamplingParams, generate
from gpt.core.llama import MLP_KINDS, Llama, LlamaConfig
from gpt.core.memory import check_fits, training_estimate
from gpt.core.model import GPT
from gpt.data.corpora import fetch, load_text_splits
from gpt.data.tokens import TokenData
from gpt.io.checkpoint import (CheckpointError, load_pretrained, load_tokenizer_from,
                               load_training_state, read_settings_file, recover_run,
                               resolve_checkpoint, save_checkpoint)
from gpt.io.files import cache_dir
from gpt.train.evaluate import bits_per_byte, token_byte_lengths
from gpt.train.loop import (BATCHES, METRICS_FILE, SCHEDULES, SETTINGS_FILE, TRAIN_EVAL, VAL_EVAL,
                            LoopConfig, MetricsLog, Task, TrainingError, create_run_directory,
                            has_checkpoint, step_rng, train_loop, training_threads)


ARCHS = ("gpt2", "llama")
# A trained BPE holds the 256 byte tokens and the special ones (<|endoftext|> and CHAT_TOKENS).
MIN_BPE_VOCAB = 256 + 1 + len(CHAT_TOKENS)
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainSettings:
    """Everything that defines a pretraining run (saved as settings.json in the run directory).

    The defaults are the book's GPT-2 recipe; `RECIPES` holds the one `python train.py` runs.
    """
    # data and tokenizer
    data: str = "tinystories"
    data_dir: str | None = None
    tokenizer: str = "bpe"          # "bpe" (train one), "char", "gpt2", or a tokenizer file/dir
    vocab_size: int = 4096          # for a trained BPE
    # model
    arch: str = "gpt2"              # "gpt2" (gpt.core.model.GPT) or "llama" (gpt.core.llama)
    preset: str | None = None       # start from a GPTConfig preset; the fields below override it
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float = 0.0
    bias: bool = True               # gpt2 only (llama has no biases)
    # llama only:
    n_kv_head: int | None = None    # key/value heads (None: n_head, no grouping)
    intermediate_size: int | None = None  # the MLP's width (None: see llama_intermediate_size)
    mlp: str = "relu2"              # "relu2" (down(relu(up x)^2)) or "swiglu"
    qk_norm: bool = True            # RMSNorm of each head's queries and keys
    untied_head: bool = True        # an output head of its own (else the token embedding)
    zero_init_proj: bool = True     # o_proj and down_proj start at zero
    softcap: float | None = None    # logits cap * tanh(logits / cap)
    rope_theta: float = 10000.0
    init: str | None = None         # start from a pretrained checkpoint instead of random weights
    # optimisation
    batch_size: int = 16
    grad_accum: int = 1
    max_iters: int | None = 2500    # the run's length in steps (None: max_minutes alone); with
                                    # chat_iters: ~15 minutes of the gpt2 recipe on 2 cores
    max_minutes: float | None = None  # a wall-clock budget (the schedule ends there)
    optimizer: str = "adamw"        # "adamw", or "muon" (+ AdamW for embeddings, head, gains)
    lr: float = 4e-3                # AdamW's peak lr (with muon: that of the gains)
    min_lr: float = 4e-4            # lr's floor at the end; every other lr falls in proportion
    schedule: str = "cosine"        # "cosine", "wsd" (warmup-stable-decay) or "constant"
    decay_fraction: float = 0.2     # wsd: the last part of the run, a linear decay to min_lr
    warmup_iters: int = 100
    muon_lr: float = 0.02           # muon: the peak lr of the blocks' matrices
    muon_momentum: float = 0.95
    embedding_lr: float | None = None   # muon: AdamW's lr of the token embedding (None: lr)
    head_lr: float | None = None    # muon: AdamW's lr of an untied output head (None: lr)
    weight_decay: float = 0.1       # AdamW's, of matrices (with muon: embedding and head)
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
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got "
                                    f"{getattr(self, name)}")
        for name, value, choices in (("arch", self.arch, ARCHS), ("mlp", self.mlp, MLP_KINDS),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES)):
            if value not in choices:
                raise TrainingError(f"--{name} must be one of {', '.join(choices)}, got "
                                    f"{value!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise TrainingError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if self.preset is not None and self.arch != "gpt2":
            raise TrainingError(f"--preset {self.preset} is a GPT-2 shape: use it with --arch "
                                f"gpt2, or give --n-layer/--n-head/--n-embd")
        if self.max_iters is None and self.max_minutes is None:
            raise TrainingError("the run needs an end: --max-iters, --max-minutes or both")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise TrainingError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if not (math.isfinite(self.lr) and 0 <= self.min_lr <= self.lr):
            raise TrainingError(f"need 0 <= min_lr <= lr, both finite, got {self.min_lr} and "
                                f"{self.lr}")
        for name, low in (("warmup_iters", 0), ("seed", 0), ("grad_clip", 0),
                          ("weight_decay", 0)):
            if not getattr(self, name) >= low:
                raise TrainingError(f"--{name.replace('_', '-')} must be >= {low}, got "
                                    f"{getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise TrainingError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.tokenizer == "bpe" and self.vocab_size < MIN_BPE_VOCAB:
            raise TrainingError(f"--vocab-size must be at least {MIN_BPE_VOCAB} for a BPE (its "
                                f"256 byte tokens and the special tokens), got {self.vocab_size}")
        if Path(self.out_dir).expanduser().is_file():
            raise TrainingError(f"--out-dir {self.out_dir} is a file, not a directory")
        if self.chat_iters < 0 or not self.chat_lr > 0:
            raise TrainingError(f"need --chat-iters >= 0 and --chat-lr > 0, got "
                                f"{self.chat_iters} and {self.chat_lr}")
        for name in ("muon_lr", "embedding_lr", "head_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise TrainingError(f"--{name.replace('_', '-')} must be > 0, got "
                                    f"{getattr(self, name)}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise TrainingError(f"--decay-fraction must be in (0, 1], got {self.decay_fraction}")
        if self.max_iters is not None and self.warmup_iters > self.max_iters:
            raise TrainingError(f"warmup_iters ({self.warmup_iters}) exceeds max_iters "
                                f"({self.max_iters})")

    def peak_and_floor(self) -> tuple[float, float]:
        """The schedule's peak and final lr, in the units of the optimizer's reference lr:
        AdamW's lr, or Muon's (whose ratio to min_lr is lr's: every group decays alike)."""
        if self.optimizer == "adamw":
            return self.lr, self.min_lr
        return self.muon_lr, self.muon_lr * (self.min_lr / self.lr if self.lr > 0 else 0.0)


# The recipes of `python train.py --recipe NAME`: TrainSettings fields that differ from its
# defaults (which are "gpt2"). "modern" is the main job, chosen by measurement: the lowest
# validation bits per byte for the same minutes on 2 cores (the ablations:
# docs/model-and-training.md). Its pretraining stops at 9.5 minutes: the chat stage takes
# the rest of the main job's 15.
RECIPES: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "modern": dict(arch="llama", n_layer=4, n_head=4, n_embd=192, block_size=256,
                   optimizer="muon", lr=4e-3, min_lr=0.0, muon_lr=0.02, schedule="wsd",
                   decay_fraction=0.3, warmup_iters=50, beta1=0.8, beta2=0.95,
                   weight_decay=0.0, max_iters=None, max_minutes=9.5,
                   # A chat step costs about what a pretraining step does (a row of a story
                   # instead of a window of text): 540 of this model's (one pass over the
                   # conversations) fill the other 5.5 minutes. Measured from one pretrained
                   # model (benchmarks/RESULTS.md, the storyteller): 540 steps follow requests
                   # better than 180 or 360, and a peak of 3e-3 better than 1e-3.
                   chat_iters=540, chat_lr=3e-3),
}


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


def llama_intermediate_size(n_embd: int, mlp: str) -> int:
    """The MLP width when none is given: 4 n_embd for ReLU² (two matrices, as GPT-2's MLP);
    for SwiGLU, whose three matrices would cost 1.5x that, 8/3 n_embd rounded up to a multiple
    of 32: the same parameters and multiply-adds."""
    if mlp == "relu2":
        return 4 * n_embd
    return -(-8 * n_embd // (3 * 32)) * 32


def model_config(settings: TrainSettings, vocab_size: int) -> GPTConfig | LlamaConfig:
    base = dict(PRESETS[settings.preset]) if settings.preset else dict(DEFAULT_MODEL)
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        if getattr(settings, name) is not None:
            base[name] = getattr(settings, name)
    base.update(vocab_size=vocab_size, dropout=settings.dropout)
    try:
        if settings.arch == "gpt2":
            return GPTConfig(**base, bias=settings.bias)
        return LlamaConfig(
            **base, n_kv_head=settings.n_kv_head or base["n_head"],
            intermediate_size=settings.intermediate_size or
            llama_intermediate_size(base["n_embd"], settings.mlp),
            rope_theta=settings.rope_theta, qk_norm=settings.qk_norm,
            tie_word_embeddings=not settings.untied_head, mlp=settings.mlp,
            zero_init_proj=settings.zero_init_proj, logit_softcap=settings.softcap)
    except ValueError as error:
        raise TrainingError(str(error)) from None


def build_model(settings: TrainSettings, vocab_size: int) -> GPT | Llama:
    """A model of random weights, drawn from the run's seed."""
    autograd.random.manual_seed(settings.seed)
    config = model_config(settings, vocab_size)
    return GPT(config) if isinstance(config, GPTConfig) else Llama(config)


def build_optimizer(model: GPT | Llama, settings: TrainSettings) -> AdamW | MultiOptimizer:
    """AdamW over every parameter (matrices decayed), or Muon for the blocks' matrices and
    AdamW for the embedding, the head and the gains (autograd.optim.muon_with_adamw)."""
    betas = (settings.beta1, settings.beta2)
    if settings.optimizer == "adamw":
        return AdamW(decay_groups(model, settings.weight_decay), lr=settings.lr, betas=betas)
    try:
        return muon_with_adamw(model, lr=settings.muon_lr, momentum=settings.muon_momentum,
                               adamw_lr=settings.lr, embedding_lr=settings.embedding_lr,
                               head_lr=settings.head_lr, betas=betas,
                               adamw_weight_decay=settings.weight_decay)
    except ValueError as error:
        raise TrainingError(f"--optimizer muon: {error}") from None


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
    model: GPT | Llama
    tokenizer: Any
    data: TokenData
    optimizer: AdamW | MultiOptimizer
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
            saved = read_settings_file(directory / SETTINGS_FILE, TrainSettings)
        except CheckpointError as error:
            raise TrainingError(f"cannot resume: {error}") from None
        # The saved settings define the run; only when to stop and how to show it may change.
        overrides = {"stop_after": settings.stop_after, "progress": settings.progress}
        settings = TrainSettings(**{**saved, **overrides})
        # A crash may have left a save half done: put the checkpoints in order first.
        ckpt = recover_run(directory)
        if ckpt is None:
            raise TrainingError(f"cannot resume: {directory} has no checkpoint yet (the run "
                                f"stopped before its first save); run the same command without "
                                f"--resume to start it again")
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
        model = build_model(settings, tokenizer.vocab_size)
        # settings.json records the shape the defaults gave, so the run says what it trained.
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            setattr(settings, name, getattr(model.config, name))
        if isinstance(model, Llama):
            settings.n_kv_head = model.config.n_kv_head
            settings.intermediate_size = model.config.intermediate_size
    for split in ("train", "val"):
        if len(data.split(split)) < model.config.block_size + 1:
            raise TrainingError(
                f"the {split} split has {len(data.split(split))} tokens, fewer than "
                f"block_size + 1 = {model.config.block_size + 1}: use a smaller --block-size "
                f"or more text")

    config = model.config
    check_fits(training_estimate(model.num_parameters(), config.n_layer, config.n_embd,
                                 config.n_head, config.vocab_size, settings.batch_size,
                                 config.block_size),
               "lower --batch-size or --block-size, or choose a smaller model")
    optimizer = build_optimizer(model, settings)
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
    """Train until max_iters or max_minutes (or stop_after, or Ctrl-C); returns a summary
    dict ("step": where it ended, so a run in minutes' length in steps; "completed": the run
    reached its end). The settings stay what was asked (max_iters None for a run in minutes)."""
    s, model = run.settings, run.model
    block = model.config.block_size
    tokens_per_step = s.batch_size * block * s.grad_accum
    run.log(f"run directory: {run.directory}")
    run.log(f"model: {type(model).__name__}, {model.num_parameters():,} parameters "
            f"({model.config.n_layer} layers, {model.config.n_head} heads, n_embd "
            f"{model.config.n_embd}, context {block}, vocabulary {model.config.vocab_size}); "
            f"{len(run.data.train):,} train tokens, {len(run.data.val):,} val tokens; "
            f"{tokens_per_step:,} tokens per step; optimizer {s.optimizer}, schedule "
            f"{s.schedule}" + (f", {s.max_minutes:g} minutes" if s.max_minutes else ""))
    token_bytes = token_byte_lengths(run.tokenizer)
    peak, floor = s.peak_and_floor()
    config = LoopConfig(
        max_steps=s.max_iters, lr=peak, schedule=s.schedule, warmup_steps=s.warmup_iters,
        min_lr=floor, decay_fraction=s.decay_fraction,
        max_seconds=s.max_minutes * 60 if s.max_minutes is not None else None,
        grad_clip=s.grad_clip, eval_interval=s.eval_interval,
        stop_after=s.stop_after, seed=s.seed, progress=s.progress,
        failure_hint=lambda: (f"The last good checkpoint is in {run.directory / 'latest'}. "
                              if has_checkpoint(run.directory) else
                              "No checkpoint was saved before it. ")
                             + "Try a lower --lr or --grad-clip.")

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
               "completed": result.completed,
               "minutes": (time.perf_counter() - started) / 60,
               "run_directory": str(run.directory)}
    run.log(f"best val loss {run.best_val:.4f}; checkpoints in {run.directory}")
    if result.interrupted:
        run.log(f"resume with: python train.py --resume {run.directory}")
    return summary
