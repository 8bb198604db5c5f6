"""Temporary stand-in (replaced by the cluster helper's module)."""

import os
import shutil
import subprocess

import pytest


def require_slurm() -> None:
    reason = None
    if shutil.which("sbatch") is None:
        reason = "no SLURM here (scripts/slurm_local.sh start)"
    else:
        done = subprocess.run(["sinfo", "-h"], capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.strip():
            reason = "SLURM does not answer (scripts/slurm_local.sh start)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
