"""Pretraining: exact resume, checkpoints, bad input, and train.py end to end."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt import load_pretrained
from gpt.data.corpora import DataError
from gpt.io.checkpoint import CheckpointError, load_training_state
from gpt.train.pretrain import TrainingError, TrainSettings, prepare_run, train

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


def step_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def quiet(*_):
    pass


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
