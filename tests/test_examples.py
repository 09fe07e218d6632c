"""The example scripts run end to end: examples/train_shakespeare.py trains for a few steps,
its loss falls, and it prints a sample."""
import os
import re
import subprocess
import sys

from _paths import REPO, data_file


def test_train_shakespeare_learns_and_samples(tmp_path):
    mirror = data_file("tinyshakespeare.txt").parent         # never downloads
    env = {**os.environ, "PYTHONPATH": str(REPO), "DU_DATA_MIRROR": str(mirror)}
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_shakespeare.py"), "--max-iters", "30",
         "--eval-interval", "15", "--eval-iters", "2", "--n-layer", "2", "--n-embd", "32",
         "--block-size", "32", "--batch-size", "8", "--lr", "1e-2", "--sample-tokens", "80",
         "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    evals = [(int(step), float(train), float(val)) for step, train, val in re.findall(
        r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out.stdout, re.MULTILINE)]
    assert [step for step, _, _ in evals] == [0, 15, 30]
    # From the uniform guess over 65 characters (ln 65 = 4.17) to below 3.4: the characters'
    # frequencies and more have been learned.
    assert evals[0][2] > 4.0 and evals[-1][2] < 3.4 and evals[-1][1] < 3.4
    sample = out.stdout.split("--- sample ---\n", 1)[1]
    assert len(sample.strip()) > 20
