"""benchmarks/plot_runs.py: the table, the CSV and the PNG of several runs' metrics.jsonl, and one
clear error line (no traceback) for a run it cannot read."""
import csv
import importlib.util
import json
import subprocess
import sys

import pytest
from _paths import REPO

SCRIPT = REPO / "benchmarks" / "plot_runs.py"


def _plot_runs():
    spec = importlib.util.spec_from_file_location("plot_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(directory, rows, tail=""):
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows) + tail, encoding="utf-8")
    return directory


@pytest.fixture
def runs(tmp_path):
    """Two runs as train_loop writes them: step rows, and evaluation rows with eval_* numbers."""
    slow = _write_run(tmp_path / "slow", [
        {"step": 1, "loss": 8.0, "lr": 0.001, "grad_norm": 1.0, "tokens_per_sec": 99, "time": 6.0},
        {"step": 2, "loss": 7.0, "lr": 0.002, "grad_norm": 1.0, "tokens_per_sec": 99, "time": 12.0},
        {"step": 2, "time": 15.0, "eval_train_loss": 6.9, "eval_train_bpb": 2.5,
         "eval_val_loss": 7.1, "eval_val_bpb": 2.56},
    ])
    fast = _write_run(tmp_path / "fast", [
        {"step": 0, "time": 1.5, "eval_val_loss": 8.3, "eval_val_bpb": 3.0},
        {"step": 1, "loss": 8.2, "time": 3.0},
        {"step": 2, "loss": 6.5, "time": 6.0},
        {"step": 3, "loss": 6.0, "time": 90.0},
        {"step": 3, "time": 120.0, "eval_val_loss": 6.2, "eval_val_bpb": 2.25},
    ], tail='{"step": 4, "loss": 5.9')        # a line still being written: skipped
    return slow, fast


def test_table_and_csv_hold_each_runs_numbers(runs, tmp_path, capsys):
    slow, fast = runs
    out = tmp_path / "points.csv"
    assert _plot_runs().main([str(slow), str(fast), "--csv", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "steps", "minutes", "val", "bpb"]
    assert lines[1].split() == ["slow", "2", "0.25", "2.5600"]      # 15 s; its one evaluation
    assert lines[2].split() == ["fast", "3", "2.00", "2.2500"]      # 120 s; the last evaluation
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["step"]) for r in rows] == \
        [("slow", "1"), ("slow", "2"), ("slow", "2"),
         ("fast", "0"), ("fast", "1"), ("fast", "2"), ("fast", "3"), ("fast", "3")]
    assert rows[0] == {"run": "slow", "step": "1", "minutes": "0.1", "train_loss": "8.0",
                       "val_loss": "", "val_bpb": ""}
    assert rows[2] == {"run": "slow", "step": "2", "minutes": "0.25", "train_loss": "",
                       "val_loss": "7.1", "val_bpb": "2.56"}
    assert rows[6]["minutes"] == "1.5" and rows[6]["train_loss"] == "6.0"


def test_labels_name_the_runs_and_a_run_without_evaluation_shows_a_dash(runs, tmp_path,
                                                                         capsys):
    slow, _ = runs
    young = _write_run(tmp_path / "young", [{"step": 1, "loss": 8.0, "time": 30.0}])
    assert _plot_runs().main([str(slow), str(young), "--labels", "old default", "new"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["old", "default", "2", "0.25", "2.5600"]
    assert lines[2].split() == ["new", "1", "0.50", "-"]


def test_without_matplotlib_one_line_says_so_and_the_table_still_prints(runs, tmp_path,
                                                                        capsys):
    module = _plot_runs()
    module.plt = None                       # as if matplotlib were not installed
    png = tmp_path / "curves.png"
    assert module.main([str(run) for run in runs] + ["--out", str(png)]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == module.NO_MATPLOTLIB and "pip install matplotlib" in captured.err
    assert "slow" in captured.out and "fast" in captured.out
    assert not png.exists()


def test_writes_a_png_when_matplotlib_is_installed(runs, tmp_path):
    module = _plot_runs()
    if module.plt is None:
        pytest.skip("matplotlib is not installed (the optional extra: pip install -e '.[plot]'); "
                    "plot_runs then writes no PNG")
    png = tmp_path / "curves.png"
    assert module.main([str(run) for run in runs] + ["--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("metrics, message", [
    (None, "no such run directory"),
    ('{"step": 1, "loss": 8.0, "time": 1.0}\n{"step": 2, "loss": \n{"step": 3, "time": 3.0}\n',
     "metrics.jsonl line 2: not JSON"),
    ('[1, 2]\n', "metrics.jsonl line 1: not a JSON object"),
    ('{"step": 1, "loss": 8.0}\n', "line 1: 'time' must be a number, got null"),
    ('{"step": 1, "loss": "low", "time": 1.0}\n', "line 1: 'loss' must be a number"),
    ('', "holds no rows yet"),
])
def test_a_run_it_cannot_read_is_one_error_line(tmp_path, metrics, message):
    good = _write_run(tmp_path / "good", [{"step": 1, "loss": 8.0, "time": 1.0}])
    bad = tmp_path / "bad"
    if metrics is not None:
        bad.mkdir()
        (bad / "metrics.jsonl").write_text(metrics, encoding="utf-8")
    done = subprocess.run([sys.executable, str(SCRIPT), str(good), str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"plot_runs: {bad}") and message in done.stderr


def test_labels_must_match_the_runs(runs):
    with pytest.raises(SystemExit) as stopped:
        _plot_runs().main([str(runs[0]), "--labels", "a", "b"])
    assert stopped.value.code == 2
