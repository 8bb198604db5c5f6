import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The learnable toy task (tests/train_fixtures.py) and a random base checkpoint beside it:
    ``(data root, checkpoint)``, made once per test module."""
    from train_fixtures import make_base_checkpoint, make_learnable_task

    root = tmp_path_factory.mktemp("data")
    make_learnable_task(root)
    return root, make_base_checkpoint(root / "base.safetensors")


@pytest.fixture(scope="session")
def sk_digits(tmp_path_factory):
    """A data root holding the mini-VTAB task ``sk-digits``, materialised once per test process
    (about 1.3 s each time) for the tests that run suites on it. Runs only read it: a test that
    needs other tasks, or checks what a suite writes into its data root, takes its own."""
    from heartlora.bundled.tasks import materialize

    root = tmp_path_factory.mktemp("sk-digits")
    materialize(root, tasks=["sk-digits"])
    return root


LONGEST_FIRST = (
    "test_slurm_executor.py",  # 97 s, two workers on 2 cores (--durations=0, summed per file)
    "test_local_executor.py",  # 63 s
    "test_train.py",  # 42 s
    "test_train_distributed.py",  # 41 s
    "test_suite.py",  # 30 s
    "test_reliability.py",  # 26 s
    "test_workers.py",  # 12 s
    "test_compile.py",  # 10 s (about 20 s more where inductor's cache is cold, as in CI)
)
"""Test files that start real processes (SLURM jobs, torchrun ranks, suite workers) or train
many runs, longest first. `make test` (``--dist loadfile --no-loadscope-reorder``) hands whole
files to its workers in collection order, so these start first and the short files fill the
other workers around them; xdist's own order (most tests first) starts them last. Measured
alternately on 2 cores: 252.8 and 269.8 s this way, 278.2 and 267.1 s in xdist's order (within
the machine's noise, about 4 % on average). Only an order: a file missing here runs after them."""


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep theirs
