"""The training loop (gpt.train.loop) and pretraining: one thread against several, schedule,
clipping and metrics, the time budget, exact resume (GPT-2 with AdamW, the modern Llama with
Muon), checkpoints, bad input, and train.py end to end."""
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autograd import Tensor
from autograd import functional as F
from autograd.nn import Linear
from autograd.optim import SGD, cosine_with_warmup
from autograd.parallel import DataParallel
from gpt import GPT, GPTConfig, load_pretrained
from gpt.chat.cli import main as chat_main
from gpt.core.llama import Llama
from gpt.data.corpora import DataError
from gpt.io.checkpoint import CheckpointError, load_training_state
from gpt.train.loop import (DROPOUT, LoopConfig, MetricsLog, Task, TrainingError,
                            backward_batches, step_rng, train_loop)
from gpt.train.pretrain import RECIPES, TrainSettings, prepare_run, train

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(f"The {w} sat on the mat number {i}. It was a {w} day.\n"
               for i in range(400) for w in ("cat", "dog", "red"))


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def settings(corpus, tmp_path, **overrides) -> TrainSettings:
    base = dict(data=str(corpus), tokenizer="char", n_layer=2, n_head=2, n_embd=16,
                block_size=16, batch_size=4, max_iters=8, warmup_iters=2, eval_interval=4,
                eval_iters=2, sample_tokens=8, out_dir=str(tmp_path / "runs"), progress=False,
                dropout=0.1, lr=3e-3)
    base.update(overrides)
    return TrainSettings(**base)


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in metrics_rows(run_dir) if "loss" in r]


def quiet(*_):
    pass


# ----------------------------------------------------------------------------------------------
# The loop: one step's forward and backward, with and without threads


def tiny_gpt(dropout: float) -> GPT:
    return GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16,
                         dropout=dropout), rng=np.random.default_rng(0))


def micro_batches(n: int, rows: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.integers(0, 20, (rows, 8)), rng.integers(0, 20, (rows, 8))) for _ in range(n)]


def gradients(model, step_fn) -> list[np.ndarray]:
    model.zero_grad()
    step_fn()
    return [p.grad.copy() for p in model.parameters()]


def test_one_thread_is_bit_for_bit_the_sharded_path_with_one_shard():
    # Before the plain path, --threads 1 ran each micro-batch as one shard of DataParallel(1);
    # the plain path must compute exactly that, so that those runs resume bit for bit.
    model = tiny_gpt(dropout=0.3)
    params, batches = model.parameters(), micro_batches(2)
    plain = gradients(model, lambda: backward_batches(None, model.loss, batches, params, 5, 3))

    def sharded():
        with DataParallel(1) as parallel:
            for micro, batch in enumerate(batches):
                parallel.backward(model.loss, [batch], params, [0.5],
                                  [step_rng(5, 3, DROPOUT, micro, 0)])
    for name, a, b in zip([n for n, _ in model.named_parameters()], plain,
                          gradients(model, sharded)):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # The dropout masks are the step's: another step draws others.
    other = gradients(model, lambda: backward_batches(None, model.loss, batches, params, 5, 4))
    assert not np.array_equal(other[0], plain[0])


def test_threads_share_the_batch_and_add_up_to_its_gradient():
    model = tiny_gpt(dropout=0.0)
    params, batches = model.parameters(), micro_batches(2, rows=5)   # 5 rows: shards of 3 and 2

    def loss_fn(x, y):
        return model.loss(x, y), {"tokens": 100 * len(x), "mean_x": float(x.mean())}
    plain = backward_batches(None, loss_fn, batches, params, 0, 0)
    plain_grads = [p.grad.copy() for p in params]
    model.zero_grad()
    with DataParallel(2) as parallel:
        threaded = backward_batches(parallel, loss_fn, batches, params, 0, 0)
    for p, g in zip(params, plain_grads):
        np.testing.assert_allclose(p.grad, g, rtol=1e-4, atol=1e-6)
    assert threaded.loss == pytest.approx(plain.loss, rel=1e-5)
    assert threaded.tokens == plain.tokens == 100 * 10          # summed over the step
    whole_mean = np.mean([x.mean() for x, _ in batches])          # averaged as the loss is
    assert threaded.numbers["mean_x"] == pytest.approx(whole_mean)
    assert plain.numbers["mean_x"] == pytest.approx(whole_mean)
    manual = (model.loss(*batches[0]).item() + model.loss(*batches[1]).item()) / 2
    assert plain.loss == pytest.approx(manual, rel=1e-6)


def test_loop_schedules_clips_logs_and_evaluates(tmp_path):
    model = Linear(3, 2, rng=np.random.default_rng(0))
    data = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    labels = np.arange(8) % 2
    optimizer = SGD(model.parameters(), lr=0.1)           # any optimizer with AdamW's interface
    evaluated, saved, weights = [], [], []

    def loss(indices):
        weights.append(model.weight.data.copy())
        return F.cross_entropy(model(Tensor(data[indices])), labels[indices])

    def evaluate(step):
        evaluated.append(step)
        return {"val_loss": F.cross_entropy(model(Tensor(data)), labels).item()}

    def checkpoint(step, numbers):
        saved.append((step, numbers["val_loss"]))
        return " (saved)"
    config = LoopConfig(max_steps=6, lr=0.5, schedule="cosine", warmup_steps=2, min_lr=0.05,
                        grad_clip=1e-3, eval_interval=3, eval_at_start=True, progress=False)
    messages = []
    task = Task(lambda step: [(np.array([step % 8, (step + 1) % 8]),)], loss, evaluate, checkpoint)
    result = train_loop(model, optimizer, task, config, MetricsLog(tmp_path / "metrics.jsonl"),
                        log=messages.append)
    assert (result.steps, result.steps_taken, result.interrupted) == (6, 6, False)
    assert result.tokens == 6 * 2                         # default: the first array's elements
    assert evaluated == [0, 3, 6] and [s for s, _ in saved] == [0, 3, 6]
    assert messages[1].startswith("step 3: val loss ") and messages[1].endswith(" (saved)")
    rows = metrics_rows(tmp_path)
    steps = [r for r in rows if "loss" in r]
    assert [r["lr"] for r in steps] == [cosine_with_warmup(s, 0.5, 2, 6, 0.05) for s in range(6)]
    assert all(r["grad_norm"] > 1e-3 for r in steps)      # the norm before clipping
    # Clipped to 1e-3, each SGD step moves the weights by lr * 1e-3 (the bias is in the norm).
    for s in range(5):
        assert np.linalg.norm(weights[s + 1] - weights[s]) <= steps[s]["lr"] * 1e-3 * 1.0001
    evals = [r for r in rows if "eval_val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6] and evals[-1]["eval_val_loss"] == \
        pytest.approx(result.final["val_loss"], abs=1e-5)
    times = [r["time"] for r in rows]
    assert times == sorted(times)


def test_loop_refuses_a_model_with_nothing_to_train(tmp_path):
    model = Linear(2, 2).requires_grad_(False)
    task = Task(lambda step: [], lambda *batch: None, lambda step: {})
    with pytest.raises(TrainingError, match="every parameter is frozen"):
        train_loop(model, SGD(model.parameters(), lr=0.1), task, LoopConfig(max_steps=1, lr=0.1),
                   MetricsLog(None))


# ----------------------------------------------------------------------------------------------
# Pretraining


@pytest.mark.parametrize("threads", [1, 2])
def test_resumed_run_equals_uninterrupted_run(corpus, tmp_path, threads):
    straight = prepare_run(settings(corpus, tmp_path, run_name="straight", threads=threads),
                           log=quiet)
    train(straight)
    first_half = prepare_run(settings(corpus, tmp_path, run_name="split", stop_after=5,
                                      threads=threads), log=quiet)
    summary = train(first_half)
    assert summary["step"] == 5
    resumed = prepare_run(settings(corpus, tmp_path), resume=first_half.directory, log=quiet)
    assert resumed.step == 5
    train(resumed)
    a, b = step_losses(straight.directory), step_losses(first_half.directory)
    assert len(a) == len(b) == 8
    assert a == b                      # bit-for-bit (rounded to 5 decimals in the log)
    times = [r["time"] for r in metrics_rows(first_half.directory)]
    assert times == sorted(times)      # time runs on across the resume
    for (name, p), (_, q) in zip(straight.model.named_parameters(),
                                 resumed.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_checkpoints_and_run_files(corpus, tmp_path):
    run = prepare_run(settings(corpus, tmp_path, run_name="r"), log=quiet)
    summary = train(run)
    d = run.directory
    for name in ("settings.json", "metrics.jsonl", "latest", "best"):
        assert (d / name).exists(), name
    opt_state, state = load_training_state(d / "latest")
    assert state["step"] == 8 and opt_state["param_groups"]
    model = load_pretrained(d)     # a run directory opens at best/
    assert model.config.n_layer == 2
    assert summary["val_loss"] < 3.5   # char vocabulary ~30: far below log(30) = 3.4 + noise
    # Bits per byte next to every evaluated loss. Every character of this text is one byte
    # (ASCII), so bits per byte is the loss in bits: loss / ln 2.
    evals = [r for r in metrics_rows(d) if "eval_val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for row in evals:
        for split in ("train", "val"):
            assert row[f"eval_{split}_bpb"] == pytest.approx(row[f"eval_{split}_loss"] /
                                                             math.log(2), abs=2e-5)
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2))


def test_loss_falls(corpus, tmp_path):
    run = prepare_run(settings(corpus, tmp_path, run_name="fall", max_iters=40,
                               eval_interval=40, dropout=0.0, lr=1e-2), log=quiet)
    train(run)
    losses = step_losses(run.directory)
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3])


def test_bad_input_is_reported_clearly(corpus, tmp_path):
    with pytest.raises(DataError, match="neither a registered corpus"):
        prepare_run(settings(corpus, tmp_path, data=str(tmp_path / "missing.txt")), log=quiet)
    with pytest.raises(TrainingError, match="fewer than block_size"):
        prepare_run(settings(corpus, tmp_path, block_size=50_000), log=quiet)
    with pytest.raises(TrainingError, match="settings.json not found"):
        prepare_run(settings(corpus, tmp_path), resume=tmp_path, log=quiet)
    with pytest.raises(TrainingError, match="warmup_iters"):
        prepare_run(settings(corpus, tmp_path, warmup_iters=100), log=quiet)


def test_corrupt_checkpoint_fails_resume_and_is_left_alone(corpus, tmp_path):
    run = prepare_run(settings(corpus, tmp_path, run_name="c", stop_after=4), log=quiet)
    train(run)
    weights = run.directory / "latest" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = sorted(p.name for p in (run.directory / "latest").iterdir())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        prepare_run(settings(corpus, tmp_path), resume=run.directory, log=quiet)
    assert sorted(p.name for p in (run.directory / "latest").iterdir()) == before
    assert len(weights.read_bytes()) == 100


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    run = prepare_run(settings(corpus, tmp_path, run_name="nan", stop_after=4), log=quiet)
    train(run)
    good = (run.directory / "latest" / "model.safetensors").read_bytes()
    resumed = prepare_run(settings(corpus, tmp_path), resume=run.directory, log=quiet)
    resumed.model.h[0].mlp.c_fc.weight.data[0, 0] = np.nan
    with pytest.raises(TrainingError, match="loss became nan at step 4"):
        train(resumed)
    assert (run.directory / "latest" / "model.safetensors").read_bytes() == good


def _train_py(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_train_py_end_to_end_and_clean_errors(corpus, tmp_path):
    out = _train_py(["--data", str(corpus), "--tokenizer", "char", "--n-layer", "1",
                     "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--max-iters", "3",
                     "--warmup-iters", "1", "--eval-iters", "1", "--out-dir", str(tmp_path / "r"),
                     "--run-name", "cli", "--no-progress", "--data-dir", str(tmp_path / "cache")])
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "cli" / "latest" / "model.safetensors").is_file()
    bad = _train_py(["--data", str(tmp_path / "nope.txt"), "--no-progress"])
    assert bad.returncode == 1
    assert bad.stderr.startswith("error:") and "nope.txt" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert "--resume" in _train_py(["--help"]).stdout


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_saves_a_checkpoint(corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / "r" / "int"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--data", str(corpus), "--tokenizer", "char",
         "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
         "--max-iters", "100000", "--eval-interval", "100000", "--eval-iters", "1",
         "--out-dir", str(tmp_path / "r"), "--run-name", "int", "--no-progress",
         "--data-dir", str(tmp_path / "cache")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and
                                          len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "interrupted at step" in stdout
    _, state = load_training_state(run_dir / "latest")
    assert state["step"] >= 3


def test_mismatched_optimizer_state_is_a_clear_error(corpus, tmp_path):
    run = prepare_run(settings(corpus, tmp_path, run_name="m", stop_after=2), log=quiet)
    train(run)
    state = np.load(run.directory / "latest" / "optimizer.npz")
    arrays = {k: state[k] for k in state.files}
    key = next(k for k in arrays if k.endswith("exp_avg"))
    arrays[key] = np.zeros((3, 3), dtype=np.float32)           # wrong shape
    np.savez(run.directory / "latest" / "optimizer.npz", **arrays)
    with pytest.raises(TrainingError, match="does not fit the model"):
        prepare_run(settings(corpus, tmp_path), resume=run.directory, log=quiet)


def test_loss_curve_png_when_matplotlib_is_installed(corpus, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra (pip install "
                                             "-e '.[plot]'); without it no PNG is written")
    run = prepare_run(settings(corpus, tmp_path, run_name="plot", max_iters=4), log=quiet)
    train(run)
    png = run.directory / "loss.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# Schedules and the time budget


def test_schedules_in_steps_and_as_fractions_of_the_run():
    cosine = LoopConfig(max_steps=10, lr=1.0, schedule="cosine", warmup_steps=2, min_lr=0.1)
    assert [cosine.lr_at(s, cosine.fraction_done(s, 0.0)) for s in range(12)] == \
        [cosine_with_warmup(s, 1.0, 2, 10, 0.1) for s in range(12)]
    # wsd: warmup, lr for the first 60 % of the rest, then a straight line down to min_lr.
    wsd = LoopConfig(max_steps=12, lr=1.0, schedule="wsd", warmup_steps=2, min_lr=0.1,
                     decay_fraction=0.4)
    lrs = [wsd.lr_at(s, wsd.fraction_done(s, 0.0)) for s in range(13)]
    assert lrs[:2] == [0.5, 1.0] and lrs[2:8] == [1.0] * 6
    assert lrs[8:] == pytest.approx([0.1 + 0.9 * (12 - s) / 4 for s in range(8, 13)])
    # A time budget: the fraction is the larger of the two; either alone works.
    both = LoopConfig(max_steps=102, lr=1.0, warmup_steps=2, max_seconds=60.0)
    assert both.fraction_done(52, 6.0) == pytest.approx(0.5)      # steps ahead of time
    assert both.fraction_done(12, 45.0) == pytest.approx(0.75)     # time ahead of steps
    timed = LoopConfig(max_steps=None, lr=1.0, schedule="wsd", max_seconds=100.0,
                       decay_fraction=0.5, min_lr=0.0)
    assert (timed.lr_at(500, timed.fraction_done(500, 40.0)), timed.last_step) == (1.0, None)
    assert timed.lr_at(500, timed.fraction_done(500, 75.0)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs an end"):
        LoopConfig(max_steps=None, lr=1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        LoopConfig(max_steps=5, lr=1.0, schedule="linear")


def test_time_budget_ends_the_run_where_its_decay_ends(tmp_path, monkeypatch):
    clock = [0.0]

    def fake_perf_counter():             # every reading of the clock is 0.25 s later
        clock[0] += 0.25
        return clock[0]
    monkeypatch.setattr("gpt.train.loop.time.perf_counter", fake_perf_counter)
    model = Linear(3, 2, rng=np.random.default_rng(0))
    data = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    labels = np.arange(8) % 2

    def loss(indices):
        return F.cross_entropy(model(Tensor(data[indices])), labels[indices])
    task = Task(lambda step: [(np.array([step % 8]),)], loss, lambda step: {"val_loss": 0.0})
    config = LoopConfig(max_steps=None, lr=0.5, schedule="wsd", warmup_steps=2, min_lr=0.0,
                        decay_fraction=0.5, max_seconds=20.0, progress=False, eval_interval=1000)
    result = train_loop(model, SGD(model.parameters(), lr=0.1), task, config, MetricsLog(None),
                        log=quiet)
    lrs = [r["lr"] for r in result.history if "lr" in r]
    assert result.completed and not result.interrupted
    assert 5 < result.steps == len(lrs) < 40          # the budget, not a step count, ended it
    assert result.history[-2]["time"] <= 20.0 + 1.0   # the last step started within the budget
    assert lrs[2] == 0.5 and lrs[-1] < 0.1            # stable, then decayed to near 0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    # Resumed after its budget is spent, the run takes no more steps.
    again = train_loop(model, SGD(model.parameters(), lr=0.1), task, config,
                       MetricsLog(None, result.history), start_step=result.steps, log=quiet)
    assert again.steps_taken == 0 and again.completed


# ----------------------------------------------------------------------------------------------
# The modern family: llama + Muon


def llama_settings(corpus, tmp_path, **overrides) -> TrainSettings:
    modern = {k: v for k, v in RECIPES["modern"].items()
              if k not in ("n_layer", "n_head", "n_embd", "block_size", "max_iters",
                           "max_minutes", "warmup_iters")}
    return settings(corpus, tmp_path, **{**modern, "n_head": 2, "n_kv_head": 1, "dropout": 0.0,
                                         "softcap": 15.0, **overrides})


@pytest.mark.parametrize("threads", [1, 2])
def test_llama_with_muon_resumes_bit_for_bit(corpus, tmp_path, threads):
    straight = prepare_run(llama_settings(corpus, tmp_path, run_name="straight",
                                          threads=threads), log=quiet)
    assert isinstance(straight.model, Llama)
    assert [type(o).__name__ for o in straight.optimizer.optimizers] == ["Muon", "AdamW"]
    train(straight)
    first_half = prepare_run(llama_settings(corpus, tmp_path, run_name="split", stop_after=5,
                                            threads=threads), log=quiet)
    assert train(first_half)["completed"] is False
    resumed = prepare_run(llama_settings(corpus, tmp_path), resume=first_half.directory,
                          log=quiet)
    assert resumed.step == 5
    assert train(resumed)["completed"] is True
    assert step_losses(straight.directory) == step_losses(first_half.directory)
    lrs = [r["lr"] for r in metrics_rows(first_half.directory) if "lr" in r]
    assert lrs[-1] < lrs[3]                        # wsd ended in its decay
    for (name, p), (_, q) in zip(straight.model.named_parameters(),
                                 resumed.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    for a, b in zip(straight.optimizer.optimizers, resumed.optimizer.optimizers):
        for (i, p_state), (j, q_state) in zip(sorted(a.state.items()), sorted(b.state.items())):
            for key in p_state:
                np.testing.assert_array_equal(p_state[key], q_state[key], err_msg=key)


def test_llama_run_records_its_settings_and_chats(corpus, tmp_path):
    run = prepare_run(llama_settings(corpus, tmp_path, run_name="modern", mlp="swiglu",
                                     qk_norm=False, rope_theta=500.0), log=quiet)
    train(run)
    saved = json.loads((run.directory / "settings.json").read_text())
    assert {k: saved[k] for k in ("arch", "optimizer", "schedule", "mlp", "qk_norm",
                                  "untied_head", "zero_init_proj", "softcap", "rope_theta",
                                  "n_layer", "n_embd", "n_kv_head", "intermediate_size")} == \
        dict(arch="llama", optimizer="muon", schedule="wsd", mlp="swiglu", qk_norm=False,
             untied_head=True, zero_init_proj=True, softcap=15.0, rope_theta=500.0, n_layer=2,
             n_embd=16, n_kv_head=1, intermediate_size=64)      # 8/3 * 16 rounded up to 32s
    model = load_pretrained(run.directory)
    assert isinstance(model, Llama) and model.lm_head is not None
    config = model.config
    assert (config.n_head, config.n_kv_head, config.mlp, config.qk_norm, config.rope_theta,
            config.logit_softcap, config.tie_word_embeddings) == (2, 1, "swiglu", False, 500.0,
                                                                 15.0, False)
    out = io.StringIO()
    status = chat_main(["--ckpt", str(run.directory), "--max-new-tokens", "4", "--seed", "0"],
                       stdin=io.StringIO("The cat\n"), stdout=out)
    assert status in (0, None) and out.getvalue().strip()


def test_modern_settings_are_checked(corpus, tmp_path):
    for overrides, message in [(dict(preset="gpt2"), "is a GPT-2 shape"),
                               (dict(mlp="gelu"), "--mlp must be one of"),
                               (dict(optimizer="lion"), "--optimizer must be one of"),
                               (dict(schedule="linear"), "--schedule must be one of"),
                               (dict(max_iters=None), "needs an end"),
                               (dict(decay_fraction=0.0), "--decay-fraction"),
                               (dict(n_kv_head=3), "cannot be shared out evenly")]:
        with pytest.raises(TrainingError, match=message):
            prepare_run(llama_settings(corpus, tmp_path, **overrides), log=quiet)


def test_train_py_recipes_and_options():
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_main", REPO / "train.py")
    train_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_py)
    modern, _ = train_py.parse_settings([])
    assert (modern.arch, modern.optimizer, modern.max_iters) == ("llama", "muon", None)
    assert modern.max_minutes == RECIPES["modern"]["max_minutes"]
    gpt2, _ = train_py.parse_settings(["--recipe", "gpt2"])
    assert gpt2 == TrainSettings(**train_py.MAIN_JOB)     # the book's recipe: the old defaults
    preset, _ = train_py.parse_settings(["--preset", "shakespeare-char"])   # a GPT-2 shape
    assert preset == TrainSettings(**train_py.MAIN_JOB, preset="shakespeare-char")
    chosen, resume = train_py.parse_settings(
        ["--no-qk-norm", "--mlp", "swiglu", "--max-minutes", "0", "--max-iters", "50",
         "--muon-lr", "0.03", "--resume", "runs/x"])
    assert (chosen.qk_norm, chosen.mlp, chosen.max_minutes, chosen.max_iters,
            chosen.muon_lr, resume) == (False, "swiglu", None, 50, 0.03, "runs/x")


def test_llama_run_in_minutes_ends_on_time_and_records_its_length(corpus, tmp_path):
    run = prepare_run(llama_settings(corpus, tmp_path, run_name="timed", max_iters=None,
                                     max_minutes=0.02, eval_interval=1000), log=quiet)
    summary = train(run)
    assert summary["completed"] and summary["step"] >= 1
    assert run.settings.max_iters is None       # the settings keep what was asked...
    assert json.loads((run.directory / "settings.json").read_text())["max_iters"] is None
    _, state = load_training_state(run.directory / "latest")
    assert state["step"] == summary["step"]     # ...the checkpoint and summary, where it ended


def test_the_end_never_evaluates_a_step_twice(tmp_path):
    """A finished run resumed writes its last step's evaluation row once (the same guard keeps
    a Ctrl-C that lands during an evaluation from writing it twice)."""
    model = Linear(3, 2, rng=np.random.default_rng(0))
    data = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    labels = np.arange(8) % 2
    evaluated = []

    def evaluate(step):
        evaluated.append(step)
        return {"val_loss": F.cross_entropy(model(Tensor(data)), labels).item()}
    task = Task(lambda step: [(np.array([step % 8]),)],
                lambda i: F.cross_entropy(model(Tensor(data[i])), labels[i]), evaluate)
    config = LoopConfig(max_steps=4, lr=0.1, eval_interval=2, progress=False)
    path = tmp_path / "metrics.jsonl"
    train_loop(model, SGD(model.parameters(), lr=0.1), task, config, MetricsLog(path))
    again = train_loop(model, SGD(model.parameters(), lr=0.1), task, config,
                       MetricsLog.resume(path, up_to_step=4), start_step=4)
    assert evaluated == [2, 4] and again.steps_taken == 0
    assert [r["step"] for r in metrics_rows(tmp_path) if "eval_val_loss" in r] == [2, 4]
    assert again.final["val_loss"] == pytest.approx(metrics_rows(tmp_path)[-1]["eval_val_loss"])
