"""The SLURM cluster for tests that submit jobs: `scripts/slurm_local.sh start` runs one on this machine.

`require_slurm()` at the top of such a test returns when sbatch, squeue, sinfo and scancel are on
PATH and the cluster answers with a node that can run jobs; otherwise the test is skipped with the
reason, or failed under CI (`CI=true`), where `.ci/run` starts the cluster and its absence is a
broken run, not a missing feature.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

START = "scripts/slurm_local.sh start"
COMMANDS = ("sbatch", "squeue", "sinfo", "scancel")
# sinfo's short node states that run jobs; a trailing * (not responding) or drain/down does not.
USABLE_STATE = re.compile(r"(idle|mix|alloc|comp|plnd)[~#%$@^-]?")


def slurm_problem() -> str | None:
    """Why no test job can run here, or None when the cluster answers."""
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not found (run {START})"
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 15 s (run {START})"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return f"sinfo failed: {lines[-1]} (run {START})"
    nodes = [line.split() for line in done.stdout.splitlines() if line.strip()]
    if not nodes:
        return f"sinfo shows no node (run {START})"
    if not any(len(node) == 2 and USABLE_STATE.fullmatch(node[1]) for node in nodes):
        states = ", ".join(" ".join(node) for node in nodes)
        return f"no node can run jobs ({states}); restart the cluster: {START}"
    return None


def require_slurm() -> None:
    """Return when a SLURM cluster runs jobs here; else skip the test (fail it when CI=true)."""
    problem = slurm_problem()
    if problem is None:
        return
    reason = f"no SLURM cluster: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the SLURM tests", pytrace=False)
    pytest.skip(reason)
