"""The one exception type that heartlora raises for bad user input.

`HeartLoRAError` subclasses `ValueError`, so library callers can catch either; the CLI
catches it and prints its one-line message (no traceback unless `--debug`).
"""

from __future__ import annotations


class HeartLoRAError(ValueError):
    """Bad input from the user: the message names the thing that is wrong and what was expected."""
