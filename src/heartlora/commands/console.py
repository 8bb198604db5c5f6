"""What the commands print, and what happens when the reader of stdout goes away.

``heartlora train ... | head -1`` closes the pipe after the first line. Python then raises
`BrokenPipeError` on the next write (the SIGPIPE note of the Python docs, "Note on SIGPIPE").
A training run keeps going without its log lines, since its results are files; other commands
stop quietly with exit code 141, as a tool killed by SIGPIPE would. Either way stdout is pointed
at ``os.devnull``, so that the interpreter's final flush cannot raise a second error.
"""

from __future__ import annotations

import os
import select
import sys

STDOUT_CLOSED_EXIT = 141
"""Exit code when stdout closed early: 128 + SIGPIPE, what a shell reports for such a tool."""


def say(message: str) -> None:
    """Print ``message`` on stdout now (flushed, so `tail -f`/`tee` see it); once stdout is
    closed, drop this and every later line and say so once on stderr."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        drop_stdout()
        print("heartlora: stdout was closed; carrying on without log lines", file=sys.stderr)


def drop_stdout() -> None:
    """Point stdout at ``os.devnull`` (after its reader went away)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # no real file descriptor (captured output)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)


def stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (poll reports an error on it), or when
    that cannot be checked; used to tell a closed stdout from other broken pipes."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):
        return True
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in events)
