"""What the command-line scripts share: turning expected errors into one clear line."""
from __future__ import annotations

import sys
from typing import Callable

from autograd.nn import StateDictError
from bpe import TokenizerFileError
from gpt.errors import GPTError

# Errors that mean bad input or a bad environment, not a bug: no traceback for these. The two
# lower packages know nothing of gpt, so their own error classes are listed beside GPTError.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (GPTError, StateDictError, TokenizerFileError,
                                                    FileNotFoundError)


def fail_cleanly(main: Callable[[], int]) -> int:
    """Run `main`; print an expected error as `error: ...` and exit 1 instead of a traceback."""
    try:
        return main()
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
