"""What the command-line scripts share: turning expected errors into one clear line."""
from __future__ import annotations

import sys
from typing import Callable


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a bad environment, not a bug: no traceback for these."""
    from autograd.nn import StateDictError
    from .checkpoint import CheckpointError
    from .datasets import DataError
    from .http_download import DownloadError
    from .safetensors import SafetensorsError
    from .trainer import TrainingError
    errors: list[type[BaseException]] = [CheckpointError, DataError, SafetensorsError,
                                         TrainingError, StateDictError, DownloadError,
                                         FileNotFoundError]
    try:
        from bpe import TokenizerFileError
        errors.append(TokenizerFileError)
    except ImportError:
        pass
    return tuple(errors)


def fail_cleanly(main: Callable[[], int]) -> int:
    """Run `main`; print an expected error as `error: ...` and exit 1 instead of a traceback."""
    try:
        return main()
    except expected_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
