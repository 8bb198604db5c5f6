"""The one exception type that heartlora raises for bad user input.

`HeartLoRAError` subclasses `ValueError`, so library callers can catch either; the CLI
catches it and prints its one-line message (no traceback unless `--debug`).
"""

from __future__ import annotations


class HeartLoRAError(ValueError):
    """Bad input from the user: the message names the thing that is wrong and what was expected."""


def one_line(error: BaseException) -> str:
    """The first line of an error; ``file: reason`` for an `OSError` about a file; for an error
    re-raised from a DataLoader worker ("Caught X in DataLoader worker process 0. Original
    Traceback ..."), the original message."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}".splitlines()[0]
    lines = str(error).strip().splitlines() or [type(error).__name__]
    if lines[0].startswith("Caught ") and len(lines) > 1 and ": " in lines[-1]:
        return lines[-1].split(": ", 1)[1]
    return lines[0]


def did_you_mean(name: object, known) -> str:
    """`` (did you mean 'x'?)`` for the entry of ``known`` closest to ``name``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
