import subprocess

import pytest
from slurm_cluster import require_slurm


@pytest.mark.slow
def test_the_cluster_runs_a_batch_job(tmp_path):
    require_slurm()
    command = [
        "sbatch", "--wait", "--parsable", "--job-name=heartlora-smoke", "--time=2",
        f"--chdir={tmp_path}", f"--output={tmp_path / 'slurm-%j.out'}",
        "--wrap", 'echo "job $SLURM_JOB_ID ran on $SLURM_JOB_NODELIST" > result.txt',
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as stopped:
        job = (stopped.stdout or b"").decode().strip().split(";")[0]
        if job:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)
        pytest.fail(f"sbatch --wait: job {job or '?'} did not end within 180 s")
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    node = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=15
    ).stdout.split()
    content = (tmp_path / "result.txt").read_text()
    assert content in {f"job {job} ran on {name}\n" for name in node}, content


def test_no_cluster_skips_the_test_or_fails_it_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, squeue, sinfo or scancel
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="sbatch, squeue, sinfo, scancel not found"):
        require_slurm()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the SLURM tests"):
        require_slurm()


def test_a_cluster_that_does_not_answer_is_named(tmp_path, monkeypatch):
    for name in ("sbatch", "squeue", "scancel"):
        (tmp_path / name).write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "sinfo").write_text(
        "#!/bin/sh\necho 'sinfo: error: Unable to contact slurm controller (connect failure)' >&2\n"
        "exit 1\n"
    )
    for path in tmp_path.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="sinfo failed: .*Unable to contact"):
        require_slurm()
