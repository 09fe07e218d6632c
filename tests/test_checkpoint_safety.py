"""Checkpoints survive what a run can meet: a full disk, damaged files, and a crash at any point.

The kills here are simulated in-process: every file-system call that changes a directory
(mkdir, rename/replace, unlink, rmdir) is counted, and the n-th one raises `Killed` instead of
running, for every n until a save finishes. tests/test_faults.py kills a real training process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from _tiny_chat import model as tiny_model
from _tiny_chat import tokenizer as tiny_tokenizer

import gpt.io.checkpoint as checkpoint
from autograd.optim import AdamW
from gpt.chat.templates import set_chat_template
from gpt.cli import fail_cleanly
from gpt.io.checkpoint import (COMPLETE_FILE, FAULT_ENV, CheckpointError, latest_run,
                               load_pretrained, load_training_state, newest_complete_checkpoint,
                               read_settings_file, recover_run, resolve_checkpoint, save_checkpoint)


class Killed(BaseException):
    """What a simulated kill raises: not an Exception, so nothing on the way catches it."""


TOKENIZER = tiny_tokenizer()


def save(directory: Path, step: int, best_val: float = 1.0, seed: int | None = None) -> Path:
    """A training checkpoint whose weights and optimizer state depend on `step`."""
    gpt = tiny_model(TOKENIZER, block_size=8, seed=step if seed is None else seed)
    optimizer = AdamW(gpt.parameters(), lr=1e-3)
    for p in gpt.parameters():
        p.grad = np.full_like(p.data, 0.01 * step)
    optimizer.step()
    return save_checkpoint(directory, gpt, TOKENIZER, optimizer.state_dict(),
                           {"step": step, "best_val_loss": best_val, "settings": {"lr": 1e-3}})


def step_of(directory: Path) -> int:
    """Load everything a resume loads, and return the step."""
    load_pretrained(directory)
    optimizer_state, state = load_training_state(directory)
    assert optimizer_state is not None
    return state["step"]


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ----------------------------------------------------------------------------------------------
# A full disk


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# Each place a save writes, made to fail as a full disk makes it fail.
DISK_FULL_AT = {
    "weights": lambda mp: mp.setattr(checkpoint, "save_file", _disk_full),
    "optimizer": lambda mp: mp.setattr(np, "savez", _disk_full),
    "tokenizer": lambda mp: mp.setattr(type(TOKENIZER), "save", _disk_full),
    "fsync": lambda mp: mp.setattr(os, "fsync", _disk_full),       # every file's last write
    "mkdir": lambda mp: mp.setattr(Path, "mkdir", _disk_full),
}


@pytest.mark.parametrize("where", sorted(DISK_FULL_AT))
def test_disk_full_is_one_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch,
                                                                        where):
    latest = tmp_path / "run" / "latest"
    save(latest, step=1)
    before = contents(latest)
    DISK_FULL_AT[where](monkeypatch)
    with pytest.raises(CheckpointError) as caught:
        save(latest, step=2)
    monkeypatch.undo()
    message = str(caught.value)
    assert message.startswith(f"disk full while saving {latest}")
    assert f"the previous checkpoint in {latest} is intact" in message
    assert "\n" not in message
    assert sorted(os.listdir(latest.parent)) == ["latest"]         # no .latest.tmp, no .old
    assert contents(latest) == before
    assert step_of(latest) == 1


def test_disk_full_on_the_first_save_says_there_is_no_checkpoint(tmp_path, monkeypatch, capsys):
    latest = tmp_path / "run" / "latest"
    monkeypatch.setattr(checkpoint, "save_file", _disk_full)

    def main() -> int:
        save(latest, step=1)
        return 0

    assert fail_cleanly(main) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: disk full while saving {latest}")
    assert "no earlier checkpoint" in err
    assert not latest.parent.exists() or os.listdir(latest.parent) == []


def test_other_write_errors_name_the_checkpoint_and_keep_the_previous(tmp_path, monkeypatch):
    latest = tmp_path / "latest"
    save(latest, step=1)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "model.safetensors")

    monkeypatch.setattr(checkpoint, "save_file", read_only)
    with pytest.raises(CheckpointError, match=f"cannot save {latest}: .*Permission denied.*"
                                              f"previous checkpoint in {latest} is intact"):
        save(latest, step=2)
    monkeypatch.undo()
    assert step_of(latest) == 1 and sorted(os.listdir(tmp_path)) == ["latest"]


# ----------------------------------------------------------------------------------------------
# Permissions


def test_every_checkpoint_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        latest = save(tmp_path / "latest", step=1)
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in latest.iterdir()}
    assert "tokenizer.du.json" in modes and COMPLETE_FILE in modes
    assert modes == {name: 0o644 for name in modes}
    assert stat.S_IMODE(latest.stat().st_mode) == 0o755


# ----------------------------------------------------------------------------------------------
# Damaged resume files


GOOD_STATE = {"step": 3, "best_val_loss": 1.5, "settings": {"lr": 0.001}}


def state_with(**changes) -> bytes:
    return json.dumps({**GOOD_STATE, **changes}).encode()


WHOLE = "'step' must be a whole number >= 0, got"
DAMAGED_STATES = [
    (b"{}", "missing keys 'step', 'best_val_loss', 'settings'"),
    (b'{"step": 3}', "missing keys 'best_val_loss', 'settings'"),
    (state_with(step="3"), f'{WHOLE} "3"'),
    (state_with(step=True), f"{WHOLE} true"),
    (state_with(step=-2), f"{WHOLE} -2"),
    (state_with(step=2.5), f"{WHOLE} 2.5"),
    (state_with(best_val_loss="x"), "'best_val_loss' must be a number"),
    (state_with(settings=[]), "'settings' must be a JSON object"),
    (state_with(extra=1), "unknown key 'extra'"),
    (json.dumps({"task": "dpo"}).encode(), "missing key 'step'"),
    (json.dumps({"task": 1, "step": 0}).encode(), "'task' must be a string"),
    (b"\xff\xfe{\x00}", "not UTF-8 text"),
    (b'{"step": 3', "not valid JSON"),
    (b"[1, 2]", "does not hold a JSON object"),
    (b"", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize("text, problem", DAMAGED_STATES)
def test_a_damaged_train_state_is_one_clear_error(tmp_path, text, problem):
    latest = save(tmp_path / "latest", step=3)
    (latest / "train_state.json").write_bytes(text)
    with pytest.raises(CheckpointError) as caught:
        load_training_state(latest)
    assert str(caught.value).startswith(f"{latest / 'train_state.json'}")
    assert problem in str(caught.value)


def test_good_train_states_load(tmp_path):
    latest = save(tmp_path / "latest", step=3)
    for state in (GOOD_STATE, {**GOOD_STATE, "best_val_loss": float("inf")},
                  {"task": "instruct", "step": 7, "chat_template": "alpaca", "results": {}}):
        (latest / "train_state.json").write_text(json.dumps(state))
        assert load_training_state(latest)[1] == state


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a zip", "no structure"])
def test_a_damaged_optimizer_file_is_one_clear_error(tmp_path, damage):
    latest = save(tmp_path / "latest", step=3)
    path = latest / "optimizer.npz"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not a zip":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    else:
        np.savez(path, x=np.zeros(3))
    with pytest.raises(CheckpointError, match=f"^{path} is damaged"):
        load_training_state(latest)


@dataclass
class Settings:
    """A stand-in for a run's settings class (string annotations, as `from __future__` makes)."""
    data: str = "tinystories"
    run_name: str | None = None
    n_layer: int | None = None
    lr: float = 1e-3
    max_iters: int = 10
    bias: bool = True


GOOD_SETTINGS = dataclasses.asdict(Settings())


def settings_with(**changes) -> bytes:
    return json.dumps({**GOOD_SETTINGS, **changes}).encode()


DAMAGED_SETTINGS = [
    (b"\xff{}", "not UTF-8 text"),
    (b"{", "not valid JSON"),
    (b"7", "does not hold a JSON object"),
    (settings_with(colour="red"), "unknown key 'colour'"),
    (settings_with(lr="fast"), "'lr' must be a number, got \"fast\""),
    (settings_with(max_iters=2.5), "'max_iters' must be a whole number"),
    (settings_with(max_iters=None), "'max_iters' must be a whole number"),
    (settings_with(bias=1), "'bias' must be true or false"),
    (settings_with(data=3), "'data' must be a string"),
    (settings_with(n_layer="2"), "'n_layer' must be a whole number or null"),
]


@pytest.mark.parametrize("text, problem", DAMAGED_SETTINGS)
def test_damaged_settings_are_one_clear_error(tmp_path, text, problem):
    path = tmp_path / "settings.json"
    path.write_bytes(text)
    with pytest.raises(CheckpointError) as caught:
        read_settings_file(path, Settings)
    assert str(caught.value).startswith(str(path)) and problem in str(caught.value)


def test_good_settings_are_read_back(tmp_path):
    path = tmp_path / "settings.json"
    values = {**GOOD_SETTINGS, "run_name": "x", "n_layer": 2, "lr": 1}     # an int is a number
    path.write_text(json.dumps(values))
    assert read_settings_file(path, Settings) == values
    with pytest.raises(CheckpointError, match="settings.json not found"):
        read_settings_file(tmp_path / "nope" / "settings.json", Settings)
    # A run saved before a setting existed: the missing field takes its default.
    older = {k: v for k, v in GOOD_SETTINGS.items() if k != "lr"}
    path.write_text(json.dumps(older))
    assert Settings(**read_settings_file(path, Settings)).lr == Settings().lr


# ----------------------------------------------------------------------------------------------
# A crash at any point


@contextlib.contextmanager
def crash_at(n: int):
    """Let n directory-changing calls run, then make the next one raise Killed.

    Yields a list that holds True once the crash has happened."""
    crashed: list[bool] = []
    left = [n]
    real = {name: getattr(os, name) for name in ("mkdir", "rename", "replace", "unlink", "rmdir")}

    def counted(name):
        def call(*args, **kwargs):
            if left[0] == 0:
                crashed.append(True)
                raise Killed(f"{name}{args}")
            left[0] -= 1
            return real[name](*args, **kwargs)
        return call

    for name in real:
        setattr(os, name, counted(name))
    try:
        yield crashed
    except Killed:
        pass
    finally:
        for name, function in real.items():
            setattr(os, name, function)


def leftovers(run: Path) -> list[str]:
    return sorted(os.listdir(run))


def test_a_crash_at_any_point_of_a_save_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    """Two saves in a row may each be killed anywhere: a complete checkpoint always remains,
    the newest complete one is what resume finds, and the next save cleans up after both."""
    # A killed process loses nothing that fsync protects (that is for power cuts), and the
    # hundreds of saves below would spend most of their time waiting for the disk.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    n, states = 0, set()
    while True:
        run = tmp_path / f"first-crash-{n}"
        save(run / "latest", step=1)
        with crash_at(n) as crashed:
            save(run / "latest", step=2)
        if not crashed:
            break                                  # the save ran past its last crash point
        first = step_of(resolve_checkpoint(run / "latest"))
        assert first in (1, 2), n
        assert step_of(resolve_checkpoint(run)) == first
        n += 1
        # What a crash can leave, told apart by which versions are there and complete: a
        # second crash is tried at every point of the next save once for each such state.
        state = tuple((p.name, checkpoint._is_complete(p)) for p in sorted(run.iterdir()))
        if state in states or state == (("latest", True),):
            continue
        states.add(state)
        m = 0
        while True:                                 # a second crash, on the next save
            twice = tmp_path / f"second-crash-{n}-{m}"
            shutil.copytree(run, twice, symlinks=True)
            with crash_at(m) as crashed_again:
                save(twice / "latest", step=3)
            if not crashed_again:
                break
            found = step_of(resolve_checkpoint(twice / "latest"))
            assert found in (first, 3), (n, m)
            assert recover_run(twice) == twice / "latest"
            assert json.loads((twice / "latest" / "train_state.json").read_text())["step"] == found
            assert leftovers(twice) == ["best", "latest"], (n, m)   # best/: the first, made
            shutil.rmtree(twice)
            m += 1
        assert step_of(twice / "latest") == 3 and leftovers(twice) == ["latest"], n
    assert n > 10 and len(states) >= 4          # the crash points were really visited


def test_the_second_crash_of_issue_12_item_5(tmp_path):
    """A crash leaves latest.old and a complete .latest.tmp; resume finds the newer one, and the
    next save never deletes the last complete checkpoint before the new one is in place."""
    run = tmp_path / "run"
    save(run / "latest", step=1)
    save(run / "staged", step=2)
    os.rename(run / "latest", run / "latest.old")
    os.rename(run / "staged", run / ".latest.tmp")
    assert step_of(resolve_checkpoint(run)) == 2
    assert step_of(resolve_checkpoint(run / "latest")) == 2
    assert step_of(resolve_checkpoint(run / "latest.old")) == 1     # named: that one
    assert recover_run(run) == run / "latest"
    assert step_of(run / "latest") == 2 and leftovers(run) == ["best", "latest"]


@pytest.mark.parametrize("state", ["only .latest.tmp", "latest + complete .latest.tmp",
                                   "latest + incomplete .latest.tmp", "only latest.old",
                                   "latest + damaged latest.old"])
def test_recover_run_keeps_the_newest_complete_checkpoint(tmp_path, state):
    run = tmp_path / "run"
    if state == "only .latest.tmp":
        save(run / "x", step=2).rename(run / ".latest.tmp")
        newest = 2
    elif state == "latest + complete .latest.tmp":
        save(run / "latest", step=1)
        save(run / "x", step=2).rename(run / ".latest.tmp")
        newest = 2
    elif state == "latest + incomplete .latest.tmp":
        save(run / "latest", step=1)
        save(run / "x", step=2).rename(run / ".latest.tmp")
        (run / ".latest.tmp" / COMPLETE_FILE).unlink()
        newest = 1
    elif state == "only latest.old":
        save(run / "x", step=1).rename(run / "latest.old")
        newest = 1
    else:
        save(run / "latest", step=2)
        save(run / "x", step=1).rename(run / "latest.old")
        (run / "latest.old" / "optimizer.npz").unlink()         # half deleted
        newest = 2
    assert step_of(newest_complete_checkpoint(run / "latest")) == newest
    assert recover_run(run) == run / "latest"
    assert step_of(run / "latest") == newest and leftovers(run) == ["best", "latest"]


def test_a_checkpoint_edited_after_its_save_is_still_complete(tmp_path):
    run = tmp_path / "run"
    latest = save(run / "latest", step=1)
    set_chat_template(latest, "alpaca")                 # rewrites config.json
    assert newest_complete_checkpoint(latest) == latest
    with crash_at(6) as crashed:                        # killed while staging the next save
        save(latest, step=2)
    assert crashed and step_of(resolve_checkpoint(run)) == 1
    save(latest, step=3)
    assert step_of(latest) == 3 and leftovers(run) == ["latest"]


def test_recover_run_leaves_a_damaged_latest_for_loading_to_report(tmp_path):
    run = tmp_path / "run"
    save(run / "latest", step=1)
    weights = run / "latest" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert recover_run(run) == run / "latest"
    assert len(weights.read_bytes()) == 100
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(run / "latest")


def test_chat_finds_a_run_whose_first_save_was_interrupted(tmp_path):
    save(tmp_path / "runs" / "r" / "x", step=1).rename(tmp_path / "runs" / "r" / ".latest.tmp")
    assert latest_run(tmp_path / "runs") == tmp_path / "runs" / "r"
    assert step_of(resolve_checkpoint(tmp_path / "runs" / "r")) == 1


def test_recover_run_without_a_checkpoint(tmp_path):
    assert recover_run(tmp_path) is None
    save(tmp_path / "x", step=1).rename(tmp_path / ".latest.tmp")
    (tmp_path / ".latest.tmp" / COMPLETE_FILE).unlink()
    assert recover_run(tmp_path) is None and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# best/ after a crash between the two saves of a new best step


def test_recover_run_repairs_a_best_that_a_crash_left_behind(tmp_path):
    run = tmp_path / "run"
    save(run / "latest", step=2, best_val=2.0)
    save(run / "best", step=2, best_val=2.0)
    save(run / "latest", step=4, best_val=1.5)          # a new best; killed before best/ is saved
    recover_run(run)
    assert step_of(run / "best") == 4
    assert contents(run / "best") == contents(run / "latest")
    assert leftovers(run) == ["best", "latest"]
    save(run / "latest", step=6, best_val=1.5)          # no new best: best/ stays at step 4
    recover_run(run)
    assert step_of(run / "best") == 4


def test_recover_run_makes_the_first_best(tmp_path):
    run = tmp_path / "run"
    save(run / "latest", step=2, best_val=2.0)           # killed before the first best/ save
    recover_run(run)
    assert contents(run / "best") == contents(run / "latest")


def test_recover_run_finishes_an_interrupted_best_save(tmp_path):
    run = tmp_path / "run"
    save(run / "latest", step=4, best_val=1.5)
    save(run / "best", step=2, best_val=2.0)
    staged = contents(save(run / "x", step=4, best_val=1.5, seed=99))
    (run / "x").rename(run / ".best.tmp")
    recover_run(run)
    assert contents(run / "best") == staged          # promoted, not replaced by a copy of latest/
    assert leftovers(run) == ["best", "latest"]


# ----------------------------------------------------------------------------------------------
# The fault-injection hook


def test_the_fault_hook_kills_at_the_named_point(tmp_path, monkeypatch):
    def kill():
        raise Killed("killed")

    monkeypatch.setattr(checkpoint, "_kill_this_process", kill)
    monkeypatch.setattr(checkpoint, "_faults_seen", {})
    run = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "save:latest:complete:2")
    save(run / "latest", step=1)
    with pytest.raises(Killed):
        save(run / "latest", step=2)
    assert leftovers(run) == [".latest.tmp", "latest"]
    assert step_of(newest_complete_checkpoint(run / "latest")) == 2
    monkeypatch.setenv(FAULT_ENV, "save:best:complete")       # another checkpoint: no effect
    save(run / "latest", step=3)
    monkeypatch.setenv(FAULT_ENV, "save:latest:sometime")
    with pytest.raises(CheckpointError, match="sometime"):
        save(run / "latest", step=4)


def test_weights_that_are_nan_are_refused_by_name(tmp_path):
    from gpt import GPT, GPTConfig, load_pretrained, save_pretrained
    from gpt.io.safetensors import load_file, save_file
    save_pretrained(GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1,
                                  n_embd=8)), tmp_path)
    tensors = {k: np.array(v) for k, v in load_file(tmp_path / "model.safetensors").items()}
    tensors["transformer.h.0.mlp.c_fc.weight"][0, 0] = np.nan
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="'h.0.mlp.c_fc.weight' holds NaN or infinite"):
        load_pretrained(tmp_path)
