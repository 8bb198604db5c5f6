import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


@pytest.mark.slow
def test_readme_quickstart_runs_and_merges_exactly(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    assert int(lines["trainable after selection"]) < int(lines["trainable before selection"])
    assert float(lines["merged max |Δ|"]) < 1e-5
    assert (tmp_path / "runs" / "quickstart-adapter" / "heartlora_config.json").is_file()
