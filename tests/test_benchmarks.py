"""benchmarks/train.py runs its measurements (and the optional PyTorch yardstick) as child
processes: one that cannot run gets a one-line error naming it, not a traceback."""
import importlib.util
import sys

import pytest
from _paths import REPO


def _train_benchmark():
    spec = importlib.util.spec_from_file_location("train_benchmark",
                                                  REPO / "benchmarks" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_child_that_cannot_start_names_the_program():
    with pytest.raises(SystemExit, match=r"cannot run /nonexistent/python"):
        _train_benchmark()._child(["/nonexistent/python", "yardstick.py"])


def test_child_that_fails_reports_its_last_error_line():
    command = [sys.executable, "-c", "import sys; print('trace', file=sys.stderr); "
               "sys.exit('ModuleNotFoundError: No module named torch')"]
    with pytest.raises(SystemExit, match=r"failed: ModuleNotFoundError: No module named torch"):
        _train_benchmark()._child(command)


def test_child_returns_its_last_json_line():
    command = [sys.executable, "-c", "print('warming up'); print('{\"ms_per_iter\": 1.5}')"]
    assert _train_benchmark()._child(command) == {"ms_per_iter": 1.5}
