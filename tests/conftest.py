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
