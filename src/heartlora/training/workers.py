"""Worker processes for parallel runs that never outlive the process that started them.

A `concurrent.futures.ProcessPoolExecutor` worker waits for work on a pipe whose write end its
sibling workers also hold, so when the parent dies without shutting the pool down (SIGKILL, or
a signal it does not handle) the workers wait for ever, each holding its run folder's lock and
a model in memory. Each worker of `worker_pool` watches its parent instead: once the parent is
gone it sends itself SIGTERM — a training run then finishes its step, saves its checkpoint and
stops, exactly as when a user presses Ctrl-C, and an idle worker simply ends — and it exits
for good after `ORPHAN_GRACE_SECONDS` whatever it was doing. The locks go with the processes,
so the suite started again resumes every run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

PARENT_POLL_SECONDS = 0.5
"""How often a worker checks that its parent is alive."""

ORPHAN_GRACE_SECONDS = 120.0
"""How long an orphaned worker may take to save its run before it exits regardless."""

ORPHAN_EXIT_CODE = 128 + signal.SIGTERM
"""The exit code of a worker that ended because its parent died."""

_parent_gone = threading.Event()

Result = TypeVar("Result")


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of ``jobs`` spawned worker processes that end when this process dies.

    Submit work with ``pool.submit(call_in_worker, fn, *args)`` so that a run interrupted
    because the parent died ends its worker instead of reporting to nobody.
    """
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=watch_parent,
        initargs=(os.getpid(),),
    )


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


def call_in_worker(function: Callable[..., Result], *args: Any) -> Result:
    """``function(*args)``; when it was interrupted because the parent died, the worker exits
    at once (its run has saved what it needed to)."""
    try:
        return function(*args)
    except KeyboardInterrupt:
        if _parent_gone.is_set():
            os._exit(ORPHAN_EXIT_CODE)
        raise
