"""Worker processes for parallel runs that never outlive the process that started them.

A worker whose parent dies without stopping it (SIGKILL, or a signal it does not handle) would
train on, holding its run folder's lock and a model in memory. Each worker of
`heartlora.training.local_executor` watches its parent instead: once the parent is gone it
sends itself SIGTERM — a training run then finishes its step, saves its checkpoint and
stops, exactly as when a user presses Ctrl-C, and an idle worker simply ends — and it exits
for good after `ORPHAN_GRACE_SECONDS` whatever it was doing. The locks go with the processes,
so the suite started again resumes every run.
"""

from __future__ import annotations

import os
import signal
import threading
import time

PARENT_POLL_SECONDS = 0.5
"""How often a worker checks that its parent is alive."""

ORPHAN_GRACE_SECONDS = 120.0
"""How long an orphaned worker may take to save its run before it exits regardless."""

ORPHAN_EXIT_CODE = 128 + signal.SIGTERM
"""The exit code of a worker that ended because its parent died."""

_parent_gone = threading.Event()


def watch_parent(parent: int) -> None:
    """Start the thread that ends this worker once process ``parent`` is gone (the pool's
    initializer)."""
    threading.Thread(
        target=_watch, args=(parent,), daemon=True, name="heartlora-parent-watch"
    ).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:  # a dead parent's children are adopted by another process
        time.sleep(PARENT_POLL_SECONDS)
    _parent_gone.set()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_SECONDS)
    os._exit(ORPHAN_EXIT_CODE)


def parent_gone() -> bool:
    """True in a worker whose parent has died (its run was stopped for that reason)."""
    return _parent_gone.is_set()
