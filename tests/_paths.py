"""Where tests find the shared data files and reference vectors.

``data_file(name)`` looks in ``$DU_DATA_MIRROR`` (CI sets it), else ``<repo>/../shared/data``;
``reference_file(name)`` in ``$DU_REFERENCE_DIR``, else ``<repo>/../shared/reference``. A file that
is not there skips the test with a reason that says where it was looked for, so a checkout
without the shared folder still runs everything else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The data mirror directory (it may not exist)."""
    return Path(os.environ.get("DU_DATA_MIRROR") or REPO.parent / "shared" / "data")


def reference_dir() -> Path:
    """The reference-vector directory (it may not exist)."""
    return Path(os.environ.get("DU_REFERENCE_DIR") or REPO.parent / "shared" / "reference")


def _find(directory: Path, name: str, variable: str) -> Path:
    path = directory / name
    if not path.exists():
        pytest.skip(f"{name} not found in {directory} (set {variable} to the folder that has it)")
    return path


def data_file(name: str) -> Path:
    """Path of a shared data file (``name`` may contain ``/``), or skip the test."""
    return _find(data_dir(), name, "DU_DATA_MIRROR")


def reference_file(name: str) -> Path:
    """Path of a reference file or folder, or skip the test."""
    return _find(reference_dir(), name, "DU_REFERENCE_DIR")
