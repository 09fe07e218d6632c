"""train.py's command line around --resume, and restarting a run that never saved."""
import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

from gpt.train.loop import SETTINGS_FILE, TrainingError, create_run_directory

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)


@pytest.mark.parametrize("extra", [["--batch-size", "99"], ["--lr", "5"], ["--preset=tiny"]])
def test_resume_refuses_options_it_would_ignore(tmp_path, extra):
    with pytest.raises(TrainingError, match=f"{extra[0].split('=')[0]} would be ignored"):
        train_script.main(["--resume", str(tmp_path), *extra])


@dataclasses.dataclass
class Settings:
    out_dir: str
    run_name: str = "r"
    lr: float = 0.1


def test_a_run_that_never_saved_can_be_started_again_under_its_name(tmp_path):
    directory = create_run_directory(Settings(str(tmp_path)), "unused")
    (directory / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    again = create_run_directory(Settings(str(tmp_path), lr=0.5), "unused")  # killed before a save
    assert again == directory and not (directory / "metrics.jsonl").exists()
    assert json.loads((directory / SETTINGS_FILE).read_text())["lr"] == 0.5
    (directory / "latest").mkdir()                                          # now it has saved
    (directory / "latest" / "config.json").write_text("{}")
    (directory / "latest" / "model.safetensors").write_bytes(b"")
    with pytest.raises(TrainingError, match="already holds a run"):
        create_run_directory(Settings(str(tmp_path)), "unused")


# -- pretraining's refusals, with a tiny char-level corpus ----------------------------------------

TEXT = "".join(f"The {w} sat on the mat number {i}.\n" for i in range(300) for w in ("cat", "dog"))


def _settings(tmp_path, **overrides):
    from gpt.train.pretrain import TrainSettings
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    base = dict(data=str(tmp_path / "corpus.txt"), tokenizer="char", arch="gpt2", n_layer=1,
                n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=6, warmup_iters=1,
                eval_interval=3, eval_iters=1, sample_tokens=4, out_dir=str(tmp_path / "runs"),
                progress=False, chat_iters=0)
    base.update(overrides)
    return TrainSettings(**base)


def test_a_run_too_big_for_the_memory_is_refused_before_it_starts(tmp_path, monkeypatch):
    from gpt.core.memory import GiB, MemoryEstimateError
    from gpt.train.pretrain import prepare_run
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("gpt.core.memory.available_bytes", lambda: GiB)
    with pytest.raises(MemoryEstimateError, match="training needs about .* only 1.0 GiB is "
                                                  "available: lower --batch-size"):
        prepare_run(_settings(tmp_path, batch_size=100_000), log=lambda _: None)
    assert not (tmp_path / "runs").exists()                   # nothing was started


def test_a_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    from gpt.train.pretrain import prepare_run, train
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(TrainingError, match="No checkpoint was saved before it. Try a lower"):
        train(prepare_run(_settings(tmp_path, lr=1e38, grad_clip=0), log=lambda _: None))


@pytest.mark.parametrize("option, message", [
    (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
    (["--beta1", "1.5"], "--beta1 must be in [0, 1), got 1.5"),
    (["--beta2", "-1"], "--beta2 must be in [0, 1), got -1.0"),
    (["--warmup-iters", "-5"], "--warmup-iters must be >= 0, got -5"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--vocab-size", "10"], "--vocab-size must be at least 260 for a BPE"),
    (["--lr", "inf"], "need 0 <= min_lr <= lr, both finite"),
    (["--out-dir", "README.md"], "--out-dir README.md is a file, not a directory"),
])
def test_options_out_of_range_are_one_clear_error(option, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(TrainingError, match=re.escape(message)):
        train_script.main(["--data", "the-verdict", "--max-iters", "60", *option])
