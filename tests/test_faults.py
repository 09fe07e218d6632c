"""Kill a real training run with SIGKILL, inside its checkpoint saves too, and resume it.

Each case runs `train.py --preset tiny --threads 1` on a small text, evaluating (and saving)
every 2 steps, and kills it at a point of a save named through DU_FAULT_KILL_AT (see
`gpt.io.checkpoint._fault_point`): the process sends itself SIGKILL there, as `kill -9` would.
A kill between two saves leaves the disk as a kill at the start of the next save does, so
`save:latest:start` stands for a kill at any moment of training. After the kill, whatever
versions of latest/ and best/ are left must load; `--resume` must then finish the run with
exactly the losses, metrics and final checkpoints of a run that was never killed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.io.checkpoint import (FAULT_ENV, load_pretrained, load_training_state,
                               newest_complete_checkpoint)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(f"The {w} sat on the mat number {i}. It was a {w} day.\n"
               for i in range(150) for w in ("cat", "dog", "red"))
MAX_ITERS, EVAL_INTERVAL = 10, 2
TRAIN_ARGS = ["--preset", "tiny", "--threads", "1", "--tokenizer", "char", "--block-size", "16",
              "--batch-size", "4", "--max-iters", str(MAX_ITERS), "--warmup-iters", "2",
              "--eval-interval", str(EVAL_INTERVAL), "--eval-iters", "1", "--sample-tokens", "0",
              "--no-progress"]


def train_py(args: list[str], cache: Path,
             kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DU_DATA_DIR": str(cache)}
    env.pop(FAULT_ENV, None)
    if kill_at is not None:
        env[FAULT_ENV] = kill_at
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def start(root: Path, name: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return train_py(["--data", str(root / "corpus.txt"), "--out-dir", str(root / "runs"),
                     "--run-name", name, *TRAIN_ARGS], root / "cache", kill_at)


def resume(root: Path, name: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return train_py(["--resume", str(root / "runs" / name), "--no-progress"], root / "cache",
                    kill_at)


def losses(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """{step: training loss} and {step: validation loss} from metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return ({r["step"]: r["loss"] for r in rows if "loss" in r},
            {r["step"]: r["eval_val_loss"] for r in rows if "eval_val_loss" in r})


def assert_killed_and_loadable(result: subprocess.CompletedProcess, run: Path) -> None:
    assert result.returncode == -signal.SIGKILL, result.stderr
    for name in ("latest", "best"):
        found = newest_complete_checkpoint(run / name)
        if name == "latest" or (run / name).exists():
            assert found is not None, f"no complete {name} checkpoint in {sorted(os.listdir(run))}"
        if found is not None:
            load_pretrained(found)
            optimizer_state, state = load_training_state(found)
            assert optimizer_state is not None and state["step"] % EVAL_INTERVAL == 0


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def straight(root) -> Path:
    """The run that is never killed."""
    result = start(root, "straight")
    assert result.returncode == 0, result.stderr
    return root / "runs" / "straight"


def last_best_save(run: Path) -> int:
    """How many times the uninterrupted run saved best/ (evaluations that improved)."""
    best, count = float("inf"), 0
    for value in losses(run)[1].values():
        if value < best:
            best, count = value, count + 1
    return count


def assert_same_as_straight(run: Path, straight: Path) -> None:
    assert losses(run) == losses(straight)
    assert len(losses(run)[0]) == MAX_ITERS
    for name in ("latest", "best"):
        for file in ("model.safetensors", "optimizer.npz", "train_state.json"):
            assert (run / name / file).read_bytes() == (straight / name / file).read_bytes() \
                or file == "train_state.json" and _same_state(run / name, straight / name), \
                f"{name}/{file} differs from the uninterrupted run's"
    assert sorted(p.name for p in run.iterdir() if p.is_dir() or p.name.startswith(".")) == \
        ["best", "latest"]                                  # no .tmp or .old left behind


def _same_state(a: Path, b: Path) -> bool:
    # settings.out_dir/run_name differ between two runs; step and best loss must not.
    sa, sb = (json.loads((d / "train_state.json").read_text()) for d in (a, b))
    return (sa["step"], sa["best_val_loss"]) == (sb["step"], sb["best_val_loss"])


KILLS = [
    pytest.param("save:latest:start:2", id="between saves (any moment of training)"),
    pytest.param("save:latest:writing:2", id="writing latest"),
    pytest.param("save:latest:complete:2", id="latest staged, not swapped in"),
    pytest.param("save:best:moved_old:2", id="best.old and a complete .best.tmp"),
    pytest.param("save:best:start:LAST", id="between latest and best at a new best"),
    pytest.param("save:latest:complete:1", id="the first save staged, not swapped in"),
]


@pytest.mark.parametrize("kill_at", KILLS)
def test_a_killed_run_resumes_exactly(root, straight, kill_at):
    kill_at = kill_at.replace("LAST", str(last_best_save(straight)))
    name = kill_at.replace(":", "-")
    run = root / "runs" / name
    assert_killed_and_loadable(start(root, name, kill_at), run)
    result = resume(root, name)
    assert result.returncode == 0, result.stderr
    assert_same_as_straight(run, straight)


def test_two_kills_in_a_row_lose_nothing(root, straight):
    """Killed between the renames of a save (latest.old and a complete .latest.tmp left), then
    killed at the same point of the resumed run's first save: the resume after both still
    finishes the run exactly."""
    name = "twice"
    run = root / "runs" / name
    assert_killed_and_loadable(start(root, name, "save:latest:moved_old:2"), run)
    assert {".latest.tmp", "latest.old"} <= set(os.listdir(run)) and not (run / "latest").exists()
    assert_killed_and_loadable(resume(root, name, "save:latest:moved_old:1"), run)
    result = resume(root, name)
    assert result.returncode == 0, result.stderr
    assert_same_as_straight(run, straight)


# train.py with numpy.savez (the optimizer state's writer) failing as a full disk makes it
# fail, from the third checkpoint on (latest/ and best/ at step 2 are saved).
DISK_FULL_TRAIN_PY = """
import errno, os, runpy, sys
import numpy as np
real_savez, calls = np.savez, []
def savez(*args, **kwargs):
    calls.append(1)
    if len(calls) >= 3:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_savez(*args, **kwargs)
np.savez = savez
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_is_one_error_line_and_the_run_resumes(root, straight):
    name = "disk-full"
    run = root / "runs" / name
    env = {**os.environ, "PYTHONPATH": str(REPO), "DU_DATA_DIR": str(root / "cache")}
    env.pop(FAULT_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL_TRAIN_PY, str(REPO / "train.py"),
         "--data", str(root / "corpus.txt"), "--out-dir", str(root / "runs"), "--run-name", name,
         *TRAIN_ARGS], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: disk full while saving {run / 'latest'} ")
    assert f"the previous checkpoint in {run / 'latest'} is intact" in result.stderr
    assert not (run / ".latest.tmp").exists() and not (run / "latest.old").exists()
    assert load_training_state(run / "latest")[1]["step"] == EVAL_INTERVAL
    result = resume(root, name)
    assert result.returncode == 0, result.stderr
    assert_same_as_straight(run, straight)

