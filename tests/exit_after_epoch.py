"""`python tests/exit_after_epoch.py N ARGS...`: `heartlora ARGS...` whose processes end abruptly
(`os._exit`, as SIGKILL would end them) right after the checkpoint of epoch N is written, so a
kill-and-resume test has no timing race. Not a test module: the tests start it."""

import os
import sys

from heartlora.cli import main
from heartlora.training.trainer import Trainer

STOP_AFTER = int(sys.argv[1])
_save = Trainer.save_resume_state


def _save_then_end(self, *args, **kwargs):
    _save(self, *args, **kwargs)
    if not args and self.progress.epoch == STOP_AFTER:  # an epoch-end checkpoint
        os._exit(9)


Trainer.save_resume_state = _save_then_end
sys.exit(main(sys.argv[2:]))
