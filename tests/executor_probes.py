"""Stand-ins for `finish_run` that worker processes import (module-level, so picklable)."""

import os
import time
from pathlib import Path

from heartlora.errors import HeartLoRAError
from heartlora.training.run_state import RunInterrupted, deferred_stop


def report_placement(settings, run_dir):
    """What a worker sees: its CUDA_VISIBLE_DEVICES and its process id."""
    return {"device": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}, "probe"


def train_until_stopped(settings, run_dir):
    """A run that works in steps until its time is up or a stop signal asks it to save."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pid").write_text(str(os.getpid()))
    with deferred_stop(log=lambda *_: None) as stop:
        deadline = time.monotonic() + settings["seconds"]
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if stop.requested:
                (run_dir / "saved").write_text("yes")
                raise RunInterrupted(stop.signum)
    return {"finished": True}, "probe"


def fail(settings, run_dir):
    """A run that fails: as bad input (a message) or as a bug (``bug``)."""
    if settings.get("bug"):
        raise RuntimeError("a bug nobody foresaw")
    raise HeartLoRAError(settings["message"])
