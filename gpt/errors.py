"""GPTError: the one base class of every error that means bad input or a bad environment.

The command lines (`gpt.cli.fail_cleanly`) print such an error as a single `error: ...` line
instead of a traceback. A traceback is kept for what is left: bugs.
"""


class GPTError(Exception):
    """An expected failure: a missing or damaged file, an option out of range, a full disk."""
