"""Errors meant for the user: one line each, naming the argument and what it accepts.

`llada-hf` prints them as one line on stderr, without a traceback unless `--debug`: a `UsageError` (bad flags or
arguments, found before any model is loaded or any file is written) exits 2, any other failure exits 1.
"""


class UsageError(ValueError):
    """Bad arguments or flags, found before any work starts (`llada-hf` exits 2)."""


__all__ = ["UsageError"]
