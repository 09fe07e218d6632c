"""train.py's command line around --resume, and restarting a run that never saved."""
import dataclasses
import importlib.util
import json
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
