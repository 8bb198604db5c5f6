"""The local executor: worker placement, and every way a worker or the command can end."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import executor_probes
import pytest
from test_workers import _alive, _worker_pids, long_suite

from heartlora.errors import HeartLoRAError
from heartlora.training.executor import PlannedRun, RunFailed
from heartlora.training.local_executor import (
    FAILURE_TRACEBACK,
    LocalExecutor,
    _finish,
    worker_devices,
)


def _runs(tmp_path, count, **settings):
    return [PlannedRun(f"run {i}", dict(settings), tmp_path / f"run{i}") for i in range(count)]


def _collect(executor, runs):
    got = {}
    executor.run(runs, lambda index, result, status: got.__setitem__(index, result))
    return got


def test_named_devices_are_dealt_out_and_several_gpus_are_never_shared_silently():
    assert worker_devices(2, ["0", "1"], gpus=0) == ["0", "1"]
    assert worker_devices(4, ["2", "3"], gpus=8) == ["2", "3", "2", "3"]  # sharing, as asked
    assert worker_devices(3, None, gpus=4) == ["0", "1", "2"]
    assert worker_devices(2, None, gpus=1) == [None, None]  # one GPU or none: as it is
    assert worker_devices(2, None, gpus=0) == [None, None]
    with pytest.raises(HeartLoRAError, match="more than the 2 GPUs here.*--devices 0,1,0"):
        worker_devices(3, None, gpus=2)
    with pytest.raises(HeartLoRAError, match="expected indices of the GPUs this process sees"):
        worker_devices(2, ["cuda:0"], gpus=0)
    # indices count the GPUs this process sees, as cuda:N does
    assert worker_devices(2, None, gpus=2, visible="2,3") == ["2", "3"]
    assert worker_devices(2, ["1"], gpus=0, visible="4,6") == ["6", "6"]
    with pytest.raises(HeartLoRAError, match="got '2'; CUDA_VISIBLE_DEVICES=4,6"):
        worker_devices(1, ["2"], gpus=0, visible="4,6")


@pytest.mark.slow
def test_each_worker_sees_only_its_own_device(tmp_path):
    executor = LocalExecutor(
        2, ["3", "5"], log=lambda _: None, function=executor_probes.report_placement
    )
    got = _collect(executor, _runs(tmp_path, 4))
    assert len(got) == 4
    by_worker = {}
    for result in got.values():
        by_worker.setdefault(result["pid"], set()).add(result["device"])
    assert len(by_worker) == 2 and sorted(map(tuple, by_worker.values())) == [("3",), ("5",)]
    assert os.getpid() not in by_worker


@pytest.mark.slow
def test_a_failing_run_is_one_line_naming_it_and_no_worker_is_left(tmp_path):
    runs = _runs(tmp_path, 3, message="data_root /nowhere: no such folder")
    for run in runs:
        run.settings["after"] = str(tmp_path / "slow" / "pid")
    runs[0] = PlannedRun("slow run", {"seconds": 60}, tmp_path / "slow")
    started = time.monotonic()
    with pytest.raises(RunFailed) as failure:
        LocalExecutor(2, log=lambda _: None, function=_dispatch).run(runs, lambda *_: None)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("run run 1 failed: ")
    assert message.endswith("data_root /nowhere: no such folder")
    # the slow run was stopped (it saved), not waited for
    assert time.monotonic() - started < 40
    assert (tmp_path / "slow" / "saved").read_text() == "yes"
    assert not _alive(int((tmp_path / "slow" / "pid").read_text()))


def test_a_bug_in_a_run_is_one_line_with_its_traceback_in_the_run_folder(tmp_path):
    outcome, line = _finish(executor_probes.fail, {"bug": True}, tmp_path / "run")
    assert outcome == "failed" and "\n" not in line
    assert line.startswith("internal error: RuntimeError: a bug nobody foresaw (traceback in ")
    assert "a bug nobody foresaw" in (tmp_path / "run" / FAILURE_TRACEBACK).read_text()


def _dispatch(settings, run_dir):
    """The slow run trains until stopped; the others fail once it is under way."""
    if "message" in settings:
        deadline = time.monotonic() + 60
        while not Path(settings["after"]).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        return executor_probes.fail(settings, run_dir)
    return executor_probes.train_until_stopped(settings, run_dir)


def _once_both_runs_train(tmp_path, action):
    """A started thread that calls ``action`` once run0 and run1 have both started."""

    def wait_then_act():
        pid_files = [tmp_path / "run0" / "pid", tmp_path / "run1" / "pid"]
        deadline = time.monotonic() + 60
        while not all(p.is_file() for p in pid_files) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        action()

    thread = threading.Thread(target=wait_then_act)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_worker_stopped_from_outside_ends_the_command_in_one_line(tmp_path, signum):
    runs = _runs(tmp_path, 2, seconds=60)
    result = {}

    killer = _once_both_runs_train(
        tmp_path, lambda: os.kill(int((tmp_path / "run0" / "pid").read_text()), signum)
    )
    started = time.monotonic()
    with pytest.raises(RunFailed) as failure:
        LocalExecutor(2, log=lambda _: None, function=executor_probes.train_until_stopped).run(
            runs, lambda index, res, status: result.update({index: res})
        )
    killer.join()
    message = str(failure.value)
    assert "\n" not in message and "run run 0" in message
    if signum == signal.SIGKILL:
        assert "ended without a result (signal SIGKILL" in message
    else:
        assert f"stopped by {signal.Signals(signum).name} from outside" in message
        assert (tmp_path / "run0" / "saved").is_file()
    assert (tmp_path / "run1" / "saved").is_file()  # the other run stopped and saved
    assert time.monotonic() - started < 40 and not result
    for run in ("run0", "run1"):
        assert not _alive(int((tmp_path / run / "pid").read_text()))


@pytest.mark.slow
def test_sigterm_to_the_command_stops_every_worker_as_ctrl_c_does(tmp_path):
    runs = _runs(tmp_path, 2, seconds=60)

    killer = _once_both_runs_train(tmp_path, lambda: os.kill(os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(2, log=lambda _: None, function=executor_probes.train_until_stopped).run(
            runs, lambda *_: None
        )
    killer.join()
    assert time.monotonic() - started < 40
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    for run in ("run0", "run1"):
        assert (tmp_path / run / "saved").is_file()
        assert not _alive(int((tmp_path / run / "pid").read_text()))


def _children(pid):
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(child) for child in found.split()]


def _default_sigint() -> None:
    """Ctrl-C's default action, as a shell gives its foreground job: a pytest started in the
    background (``nohup pytest &``) ignores SIGINT, and an ignored signal is inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["training", "starting"])
def test_ctrl_c_on_a_terminal_ends_suite_jobs_2_at_once_in_one_line(tmp_path, sk_digits, when):
    """A terminal's Ctrl-C is SIGINT to the whole foreground process group."""
    out = tmp_path / "suite"
    suite = subprocess.Popen(
        long_suite(sk_digits, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group, as a shell's foreground job
        preexec_fn=_default_sigint,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        workers: list[int] = []
        if when == "training":
            deadline = time.monotonic() + 240
            while len(workers) < 2 and time.monotonic() < deadline and suite.poll() is None:
                time.sleep(0.5)
                workers = _worker_pids(out / "runs", suite.pid) if (out / "runs").is_dir() else []
            assert len(workers) == 2
            time.sleep(2)
        else:  # Ctrl-C as soon as the workers exist: they are importing torch
            deadline = time.monotonic() + 120
            while len(_children(suite.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(_children(suite.pid)) >= 2
            time.sleep(0.2)
        group = [int(p) for p in subprocess.run(
            ["pgrep", "-s", str(suite.pid)], capture_output=True, text=True
        ).stdout.split()] + workers  # fmt: skip
        stopped = time.monotonic()
        os.killpg(suite.pid, signal.SIGINT)
        suite.wait(timeout=60)
        took = time.monotonic() - stopped
        stderr = suite.stderr.read().decode()
        assert suite.returncode == 130, stderr
        assert stderr.strip() == "heartlora: interrupted", stderr
        assert took < 30
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in group), "a process outlived the suite"
    finally:
        if suite.poll() is None:
            os.killpg(suite.pid, signal.SIGKILL)
    if when == "training":  # the same command resumes both runs
        assert all((out / "runs" / "sk-digits" / m / "seed0" / "checkpoint.pt").is_file()
                   for m in ("lora", "heart-lora"))  # fmt: skip
