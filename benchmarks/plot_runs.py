"""Validation bits per byte and training loss against wall-clock minutes, several runs in one plot.

    python benchmarks/plot_runs.py runs/final-gpt2 runs/final-modern --out curves.png
    python benchmarks/plot_runs.py runs/a runs/b --labels "old default" modern --csv curves.csv

Each RUN_DIR's metrics.jsonl (written by gpt.train.loop.MetricsLog) gives two curves against
`time`, the seconds of training so far (evaluations included; a resumed run carries it on):

    top panel     validation bits per byte of each evaluation row (`eval_val_bpb`)
    bottom panel  the training loss of each step row (`loss`)

Bits per byte is the panel to compare runs by: it does not depend on the tokenizer or the size
of the vocabulary. The training loss is in nats per token of each run's own tokenizer, so it
compares only runs that share one.

The script always prints a table: each run's steps, minutes and last validation bits per byte.
`--csv FILE` writes every point (run, step, minutes, train_loss, val_loss, val_bpb), for plotting
elsewhere. The PNG needs matplotlib, an optional extra (`pip install matplotlib`, or
`pip install -e ".[plot]"`); without it the script says so in one line and still prints the
table and writes the CSV.

A line of metrics.jsonl that is not a JSON object with a numeric `step` and `time` is an error
naming the file and line, except a last line without its newline: a run still writing (or one
that crashed mid-write) leaves that, and it is skipped as gpt.train.loop.read_metrics does.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpt.train.loop import METRICS_FILE  # noqa: E402

try:                                    # optional: without it there is no PNG, only the table
    import matplotlib
    matplotlib.use("Agg")               # a file, never a window
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

NO_MATPLOTLIB = ("matplotlib is not installed (pip install matplotlib, or pip install -e "
                 "'.[plot]'): no PNG written; the table has the numbers")
CSV_COLUMNS = ("run", "step", "minutes", "train_loss", "val_loss", "val_bpb")


class MetricsError(ValueError):
    """A run directory or metrics.jsonl that cannot be read; the message names which and why."""


class Point(NamedTuple):
    """One row of metrics.jsonl: a step's training loss or an evaluation's validation numbers
    (None where the row has no such number)."""
    step: int
    minutes: float
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None


class Run(NamedTuple):
    label: str
    points: list[Point]             # in file order, which is time order

    @property
    def minutes(self) -> float:
        return self.points[-1].minutes

    @property
    def steps(self) -> int:
        return max(p.step for p in self.points)

    @property
    def last_val_bpb(self) -> float | None:
        return next((p.val_bpb for p in reversed(self.points) if p.val_bpb is not None), None)


def _number(row: dict, key: str, where: str, required: bool = False) -> float | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricsError(f"{where}: {key!r} must be a number, got {json.dumps(value)}")
    return float(value)


def read_run(directory: Path, label: str | None = None) -> Run:
    """The points of run `directory`'s metrics.jsonl, labelled `label` (default: its name)."""
    if not directory.is_dir():
        raise MetricsError(f"{directory}: no such run directory")
    path = directory / METRICS_FILE
    if not path.is_file():
        raise MetricsError(f"{directory}: no {METRICS_FILE} in it (not a training run?)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MetricsError(f"{path}: cannot be read ({error})") from None
    lines = text.split("\n")
    # The text after the last newline: "" for a complete file, else a line still being written.
    unfinished = lines.pop()
    points = []
    last = len(lines) + 1
    for number, line in enumerate(lines + [unfinished], start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == last:
                continue
            raise MetricsError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise MetricsError(f"{where}: not a JSON object")
        step = _number(row, "step", where, required=True)
        seconds = _number(row, "time", where, required=True)
        points.append(Point(int(step), seconds / 60, _number(row, "loss", where),
                            _number(row, "eval_val_loss", where),
                            _number(row, "eval_val_bpb", where)))
    if not points:
        raise MetricsError(f"{path}: holds no rows yet")
    return Run(label or directory.resolve().name, points)


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(runs: Sequence[Run]) -> str:
    """One line per run: its label, steps, minutes and last validation bits per byte."""
    width = max(len("run"), *(len(run.label) for run in runs))
    lines = [f"{'run':<{width}}  {'steps':>7}  {'minutes':>7}  {'val bpb':>7}"]
    for run in runs:
        lines.append(f"{run.label:<{width}}  {run.steps:>7}  {run.minutes:>7.2f}  "
                     f"{_cell(run.last_val_bpb, 4):>7}")
    return "\n".join(lines)


def write_csv(runs: Sequence[Run], path: Path) -> None:
    """Every point of every run, one row each; an empty cell where the row has no such number."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for run in runs:
            for p in run.points:
                writer.writerow([run.label, p.step, round(p.minutes, 4),
                                 *("" if v is None else v
                                   for v in (p.train_loss, p.val_loss, p.val_bpb))])


def plot(runs: Sequence[Run], path: Path) -> None:
    """The two panels (validation bits per byte, training loss) against minutes, as a PNG."""
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 7))
    for run in runs:
        evals = [p for p in run.points if p.val_bpb is not None]
        steps = [p for p in run.points if p.train_loss is not None]
        # One colour per run in both panels: the bottom line takes the top one's.
        (line,) = top.plot([p.minutes for p in evals], [p.val_bpb for p in evals], "o-",
                           markersize=3, label=run.label)
        bottom.plot([p.minutes for p in steps], [p.train_loss for p in steps],
                    color=line.get_color(), linewidth=0.8, alpha=0.7, label=run.label)
    top.set_ylabel("validation bits per byte")
    bottom.set_ylabel("training loss (nats per token)")
    bottom.set_xlabel("minutes of training")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", type=Path,
                        help="run directories (each holds a metrics.jsonl)")
    parser.add_argument("--out", type=Path, metavar="FILE.png", help="write the plot here")
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="one name per run, in order (default: the directories' names)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write every point here")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    labels = args.labels or [None] * len(args.runs)
    try:
        runs = [read_run(directory, label) for directory, label in zip(args.runs, labels)]
        print(table(runs))
        if args.csv is not None:
            write_csv(runs, args.csv)
            print(f"points: {args.csv}")
        if args.out is not None:
            if plt is None:
                print(NO_MATPLOTLIB, file=sys.stderr)
            else:
                plot(runs, args.out)
                print(f"plot: {args.out}")
    except MetricsError as error:
        print(f"plot_runs: {error}", file=sys.stderr)
        return 1
    except OSError as error:            # e.g. --out or --csv in a directory that is not there
        print(f"plot_runs: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
