"""The training loop: the one that pretraining and every fine-tuning task run.

    for step in range(start, last):                      (or until the time budget is spent)
        optimizer.lr = schedule(step, progress)          warmup, then cosine, wsd or constant
        for batch in task.batches(step):                 the step's micro-batches
            task.loss(*batch).backward()                 gradients add up in .grad
        stop if the loss is not finite                   (the weights are still the last good ones)
        clip the global gradient norm
        optimizer.step()
        a row in metrics.jsonl, the progress bar
        every eval_interval steps: task.evaluate, then task.checkpoint

A kind of training is a `Task`: its batches, its loss, its evaluation and its checkpoint.
The loop owns the rest, so that pretraining (`gpt.train.pretrain`) and fine-tuning
(`gpt.finetune.common.fit`) schedule, clip, log, evaluate and stop in the same way.

Threads. Without `parallel` a step is the plain loop above, in this thread. Given an
`autograd.parallel.DataParallel` of several threads, each micro-batch is cut into one shard per
thread, the shards' forward and backward passes run at the same time, and their gradients are
summed in shard order, so that a run is repeatable. Both give the gradient of the mean loss over
the step's rows, and one thread gives bit for bit what the sharded path gives with one shard.

Schedule. The first `warmup_steps` steps ramp the learning rate up linearly. After them its
shape is a function of the run's progress p from 0 to 1: "cosine" falls along a half cosine
from lr to min_lr, "wsd" (warmup-stable-decay) holds lr and spends the last `decay_fraction` of
the run falling in a straight line to min_lr, "constant" holds lr. The run's length is a number
of steps (`max_steps`: p = (step - warmup) / (max_steps - warmup)), a wall-clock budget
(`max_seconds`: p = seconds of training so far / max_seconds, evaluations included), or both,
and then the one spent first ends it (p is the larger of the two). A budget in time is what a
comparison of recipes at equal cost needs: a faster step then buys more steps, and the decay
still ends at the budget. The learning rate of a time-budgeted run depends on how fast its
steps ran, so such a run does not resume bit for bit (one in steps does). The formulas are
autograd.optim's (`lr_schedule` derives them); `LoopConfig.lr_at` gives them the progress.

Randomness. The dropout masks of step s, micro-batch m, shard i come from
`step_rng(seed, s, DROPOUT, m, i)`, and a task draws the batches of step s from
`step_rng(seed, s)`: a pure function of where they are used, and the learning rate a function
of s. A checkpoint that holds the weights, the optimizer state and the step therefore resumes a
run bit for bit, with no generator state saved.

Ctrl-C. The first one asks the loop to stop after the step it is in (`GracefulInterrupt`): a
half-done optimizer step would save half-updated weights. The loop then evaluates and
checkpoints as it does at the end. A second Ctrl-C stops at once.

Every run directory holds settings.json (`create_run_directory`), metrics.jsonl (`MetricsLog`:
one JSON object per line, either a step's `loss`, `lr`, `grad_norm`, `tokens_per_sec`, `time`
and what the task's loss adds, or an evaluation's `eval_*` numbers) and loss.png
(`plot_metrics`, when matplotlib is installed).
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from autograd import Tensor
from autograd.nn import Module
from autograd.optim import SCHEDULES, clip_grad_norm, scheduled_lr
from autograd.parallel import DataParallel, limit_blas_threads, split_batch
from autograd.random import using_rng
from gpt.errors import GPTError
from gpt.io.checkpoint import newest_complete_checkpoint

SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class TrainingError(GPTError, RuntimeError):
    """Training cannot go on (bad settings, non-finite loss); the message says why."""


# Streams of randomness, so that batches, the two evaluation splits and dropout never share a
# generator.
BATCHES, TRAIN_EVAL, VAL_EVAL, DROPOUT = range(4)


def step_rng(seed: int, step: int, stream: int = BATCHES, *keys: int) -> np.random.Generator:
    """The generator for one step's randomness: a pure function of (seed, step, stream, keys)."""
    return np.random.default_rng([seed, stream, step, *keys])


# ----------------------------------------------------------------------------------------------
# What a task supplies, and how the loop is set up


Batch = tuple  # arrays that share their first dimension, the batch's rows: (x, y), (indices,)


@dataclass
class Task:
    """What one kind of training supplies to `train_loop`.

    batches(step): the micro-batches of that step, each a tuple of arrays whose first dimension
        is the rows (pretraining: (x, y) token ids (B, T); fine-tuning: (record indices,)). A
        pure function of the step, so that a resumed run sees the same batches.
    loss(*batch): the mean loss over the batch's rows, a scalar Tensor; or (loss, numbers to
        log). Of those numbers, "tokens" (the tokens the batch holds, for tokens/s) is summed
        over the step and the others are averaged as the loss is. Without "tokens" a batch
        counts the elements of its first array (B * T for token ids).
    evaluate(step): numbers to log and print, e.g. {"train_loss": 2.61, "val_loss": 2.63,
        "val_bpb": 0.88}; written to metrics.jsonl as eval_train_loss, ...
    checkpoint(step, numbers): save the run after an evaluation (it gets evaluate's numbers);
        returns text to print after the evaluation's line ("" for none). None: the task saves
        on its own after the loop.
    """
    batches: Callable[[int], list[Batch]]
    loss: Callable[..., Tensor | tuple[Tensor, dict[str, float]]]
    evaluate: Callable[[int], dict[str, float]]
    checkpoint: Callable[[int, dict[str, float]], str] | None = None


@dataclass
class LoopConfig:
    """How the loop runs: its length, schedule, clipping, evaluations and display."""
    max_steps: int | None           # the last step (None: max_seconds alone ends the run)
    lr: float                       # peak learning rate
    schedule: str = "cosine"        # "cosine", "wsd" or "constant" (see the module docstring)
    warmup_steps: int = 0           # linear warmup from lr / warmup_steps
    min_lr: float = 0.0             # where cosine and wsd end
    decay_fraction: float = 0.2     # wsd: the last part of the run, spent decaying to min_lr
    max_seconds: float | None = None  # a wall-clock budget: the run ends when it is spent
    grad_clip: float = 1.0          # clip the global gradient norm to this (0: no clipping)
    eval_interval: int = 250
    eval_at_start: bool = False     # also evaluate before the first step
    stop_after: int | None = None   # end after this step (evaluated, checkpointed), to resume later
    seed: int = 0                   # of the dropout masks (see step_rng)
    progress: bool = True
    description: str = "training"   # the progress bar's label
    # Added to the error when the loss is not finite; a function is asked at that moment (what
    # to say may depend on whether a checkpoint has been saved yet).
    failure_hint: str | Callable[[], str] = ""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of "
                             f"{', '.join(SCHEDULES)}")
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("the run needs an end: max_steps, max_seconds or both")
        if self.max_steps is not None and not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"need 0 <= warmup_steps <= max_steps, got {self.warmup_steps} "
                             f"and {self.max_steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got {self.min_lr} and {self.lr}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")

    @property
    def last_step(self) -> int | None:
        """The step the run ends at, unless its time runs out first (None: only time ends it)."""
        ends = [n for n in (self.max_steps, self.stop_after) if n is not None]
        return min(ends) if ends else None

    def fraction_done(self, step: int, seconds: float) -> float:
        """How far the run is, from 0 (end of warmup) to 1 (its end), at `step` after
        `seconds` of training: the larger of the two fractions it has a budget for."""
        done = 0.0
        if self.max_steps is not None:
            done = (step - self.warmup_steps) / max(self.max_steps - self.warmup_steps, 1)
        if self.max_seconds is not None:
            done = max(done, seconds / self.max_seconds)
        return min(max(done, 0.0), 1.0)

    def lr_at(self, step: int, progress: float) -> float:
        """The learning rate of `step`, at `progress` (`fraction_done`): the formulas of
        autograd.optim.lr_schedule, driven by progress since a time budget's is not the step's."""
        return scheduled_lr(self.schedule, step, progress, self.lr, self.warmup_steps,
                            self.min_lr, self.decay_fraction)


@dataclass
class LoopResult:
    steps: int                      # the step reached (counting steps before a resume)
    interrupted: bool
    seconds: float                  # in training steps, evaluations excluded (this session)
    tokens: int                     # through forward and backward (this session)
    steps_taken: int                # in this session
    final: dict[str, float]         # the last evaluation
    history: list[dict] = field(default_factory=list)      # metrics.jsonl's rows
    completed: bool = False         # the run reached its end (max_steps or max_seconds), rather
                                    # than stop_after or a Ctrl-C

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps_taken, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# One step's forward and backward passes


class StepLoss(NamedTuple):
    loss: float                     # mean over the step's rows
    tokens: int
    numbers: dict[str, float]       # the other numbers the task's loss returned, averaged


def _loss_and_numbers(output, batch: Batch) -> tuple[Tensor, int, dict[str, float]]:
    """A task's loss output as (loss, tokens, other numbers)."""
    if isinstance(output, tuple):
        loss, numbers = output
        numbers = dict(numbers)
        return loss, int(numbers.pop("tokens", batch[0].size)), numbers
    return output, batch[0].size, {}


def _add_numbers(into: dict[str, float], numbers: dict[str, float], weight: float) -> None:
    for name, value in numbers.items():
        into[name] = into.get(name, 0.0) + weight * float(value)


def backward_batches(parallel: DataParallel | None, loss_fn: Callable, batches: list[Batch],
                     params: Sequence[Tensor], seed: int, step: int) -> StepLoss:
    """Forward and backward of one step's micro-batches.

    The gradients add up in the parameters' `.grad` as those of the mean loss over all the
    step's rows: every micro-batch weighs the same. With one thread (`parallel` None, or of
    one thread) each micro-batch is run whole, here: the plain loop. With several, each
    micro-batch is cut into one shard per thread, weighing by its number of rows. Shard i of
    micro-batch m draws its dropout masks from step_rng(seed, step, DROPOUT, m, i); a whole
    micro-batch is shard 0.
    """
    weight = 1.0 / len(batches)
    loss_total, tokens, numbers = 0.0, 0, {}
    if parallel is None or parallel.threads == 1:
        for micro, batch in enumerate(batches):
            with using_rng(step_rng(seed, step, DROPOUT, micro, 0)):
                loss, batch_tokens, batch_numbers = _loss_and_numbers(loss_fn(*batch), batch)
                (loss * weight if len(batches) > 1 else loss).backward()
            loss_total += weight * loss.item()
            tokens += batch_tokens
            _add_numbers(numbers, batch_numbers, weight)
        return StepLoss(loss_total, tokens, numbers)

    shard_results: dict[int, tuple[int, dict[str, float]]] = {}

    def shard_loss(shard: int, *arrays: np.ndarray) -> Tensor:        # runs in shard's thread
        loss, shard_tokens, shard_numbers = _loss_and_numbers(loss_fn(*arrays), arrays)
        shard_results[shard] = (shard_tokens, shard_numbers)
        return loss

    for micro, batch in enumerate(batches):
        rows = len(batch[0])
        slices = split_batch(rows, parallel.threads)
        weights = [(sl.stop - sl.start) / (rows * len(batches)) for sl in slices]
        rngs = [step_rng(seed, step, DROPOUT, micro, i) for i in range(len(slices))]
        shards = [(i, *(a[sl] for a in batch)) for i, sl in enumerate(slices)]
        losses = parallel.backward(shard_loss, shards, params, weights, rngs)
        loss_total += sum(w * loss for w, loss in zip(weights, losses))
        for i, w in enumerate(weights):
            shard_tokens, shard_numbers = shard_results.pop(i)
            tokens += shard_tokens
            _add_numbers(numbers, shard_numbers, w)
    return StepLoss(loss_total, tokens, numbers)


@contextmanager
def training_threads(threads: int) -> Iterator[DataParallel | None]:
    """`threads` cores for a training run: a DataParallel over them, or None for one core (the
    plain loop). Each thread's matrix products run on one core either way, so that --threads 1
    leaves the other cores to other jobs."""
    if threads > 1:
        with DataParallel(threads) as parallel:
            yield parallel
    else:
        with limit_blas_threads(1):
            yield None


# ----------------------------------------------------------------------------------------------
# The loop


def train_loop(model: Module, optimizer: Any, task: Task, config: LoopConfig,
               metrics: MetricsLog, *, start_step: int = 0, parallel: DataParallel | None = None,
               log: Callable[[str], None] = print) -> LoopResult:
    """Train the parameters of `model` that require a gradient from `start_step` to
    `config.last_step` (or a Ctrl-C), then evaluate (and checkpoint) once more.

    `optimizer` is anything with AdamW's interface: `lr` (set before each step), `zero_grad()`,
    `step()` (and `step(parallel)` when `parallel` is given). Raises TrainingError when the loss
    is not finite, before that step changes any weight.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("nothing to train: every parameter is frozen")
    last_step = config.last_step
    # `time` in metrics.jsonl runs on across a resume: seconds of training so far, evaluations
    # included, not the pause.
    time_before = next((row["time"] for row in reversed(metrics.rows) if "time" in row), 0.0)
    started = time.perf_counter()

    def seconds_so_far() -> float:
        return time_before + time.perf_counter() - started

    # A run that time ends has no known number of steps: its bar counts them without a total.
    bar = tqdm(total=last_step if config.max_seconds is None else None, initial=start_step,
               desc=config.description, unit="step", disable=not config.progress,
               dynamic_ncols=True)

    def show(message: str) -> None:
        with tqdm.external_write_mode():                 # above the progress bar, not through it
            log(message)

    # The last evaluation made (step, numbers): the end does not evaluate a step twice (a
    # Ctrl-C during an evaluation, or a resumed run that had already finished).
    last_eval: tuple[int, dict[str, float]] | None = None
    for row in reversed(metrics.rows):
        if row.get("step") == start_step and any(key.startswith("eval_") for key in row):
            last_eval = (start_step, {key[len("eval_"):]: value for key, value in row.items()
                                      if key.startswith("eval_")})
            break

    def evaluation(step: int) -> dict[str, float]:
        nonlocal last_eval
        numbers = task.evaluate(step)
        metrics.append({"step": step, "time": round(seconds_so_far(), 3),
                        **{f"eval_{k}": round(float(v), 5) for k, v in numbers.items()}})
        note = task.checkpoint(step, numbers) if task.checkpoint is not None else ""
        show(f"step {step}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}"
                                          for k, v in numbers.items()) + note)
        last_eval = (step, numbers)
        return numbers

    def reached_end(step: int) -> bool:
        return config.fraction_done(step, seconds_so_far()) >= 1.0 or (
            config.max_steps is not None and step >= config.max_steps)

    model.train()
    step, seconds, tokens, smoothed_speed = start_step, 0.0, 0, None
    try:
        with GracefulInterrupt() as interrupt:
            if config.eval_at_start and step == 0:
                evaluation(step)
            while not (interrupt.requested or reached_end(step) or
                       (last_step is not None and step >= last_step)):
                t0 = time.perf_counter()
                lr = config.lr_at(step, config.fraction_done(step, seconds_so_far()))
                optimizer.lr = lr
                optimizer.zero_grad()
                result = backward_batches(parallel, task.loss, task.batches(step), params,
                                          config.seed, step)
                if not math.isfinite(result.loss):
                    hint = config.failure_hint
                    hint = hint() if callable(hint) else hint
                    raise TrainingError(f"the loss became {result.loss} at step {step}; "
                                        f"stopping. {hint}".rstrip())
                grad_norm = (clip_grad_norm(params, config.grad_clip) if config.grad_clip > 0
                             else float("nan"))
                if parallel is not None:
                    optimizer.step(parallel)
                else:
                    optimizer.step()
                step += 1
                dt = time.perf_counter() - t0
                seconds += dt
                tokens += result.tokens
                speed = result.tokens / dt
                smoothed_speed = speed if smoothed_speed is None else \
                    0.9 * smoothed_speed + 0.1 * speed
                metrics.append({"step": step, "loss": round(result.loss, 5), "lr": lr,
                                "grad_norm": round(grad_norm, 4), "tokens_per_sec": round(speed),
                                "time": round(seconds_so_far(), 3),
                                **{k: round(v, 5) for k, v in result.numbers.items()}})
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{lr:.2e}",
                                tok_s=f"{smoothed_speed:,.0f}")
                if step % config.eval_interval == 0 and not reached_end(step) and \
                        (last_step is None or step < last_step):
                    evaluation(step)            # (the end has an evaluation of its own)
            bar.close()
            interrupted = interrupt.requested
            completed = not interrupted and reached_end(step)
            if interrupted:
                log(f"interrupted at step {step}: evaluating and saving (Ctrl-C again to quit "
                    f"without saving)...")
            final = (last_eval[1] if last_eval is not None and last_eval[0] == step
                     else evaluation(step))
    finally:
        bar.close()
    if metrics.path is not None:
        plot_metrics(metrics.path.parent)
    return LoopResult(step, interrupted, seconds, tokens, step - start_step, final, metrics.rows,
                      completed)


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


# ----------------------------------------------------------------------------------------------
# The run directory's files


def create_run_directory(settings, default_name: str, hint: str = "") -> Path:
    """Create `settings.out_dir/(settings.run_name or default_name)` and write settings.json
    (the dataclass `settings`) into it; a directory that already holds a run is refused
    (`hint` says what else to do). A run that stopped before its first checkpoint left
    nothing to resume: its directory is started afresh."""
    directory = Path(settings.out_dir).expanduser() / (settings.run_name or default_name)
    if (directory / SETTINGS_FILE).exists():
        if has_checkpoint(directory):
            raise TrainingError(f"run directory {directory} already holds a run; {hint}choose "
                                f"another --run-name")
        (directory / METRICS_FILE).unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings), indent=2)
                                           + "\n", encoding="utf-8")
    return directory


def has_checkpoint(directory: Path) -> bool:
    """Does run `directory` hold a checkpoint (complete, of latest/ or best/) to resume from?"""
    return any(newest_complete_checkpoint(directory / name) is not None
               for name in ("latest", "best"))


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended as the run goes; `rows` holds them too.
    With `path` None the rows are only kept in memory."""

    def __init__(self, path: Path | None, rows: list[dict] | None = None):
        self.path = path
        self.rows: list[dict] = list(rows or [])

    @classmethod
    def resume(cls, path: Path, up_to_step: int) -> MetricsLog:
        """The rows logged up to `up_to_step`; the file is rewritten without the others (a
        resumed run logs the steps after its checkpoint again)."""
        log = cls(path, read_metrics(path, up_to_step))
        path.write_text("".join(json.dumps(r) + "\n" for r in log.rows), encoding="utf-8")
        return log

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    """The rows of a metrics.jsonl (up to `up_to_step`); a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if up_to_step is None or row.get("step", 0) <= up_to_step:
            rows.append(row)
    return rows


def plot_metrics(directory: Path) -> Path | None:
    """loss.png from metrics.jsonl, when matplotlib is installed (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(directory / METRICS_FILE)
    steps = [r["step"] for r in rows if "loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(steps, losses, alpha=0.35, label="train loss (per step)")
    for split in ("train", "val"):
        evals = [r for r in rows if f"eval_{split}_loss" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r[f"eval_{split}_loss"] for r in evals], "o-",
                    label=f"{split} loss (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = directory / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
