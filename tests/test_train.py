import contextlib
import csv
import io
import json
import os
import signal

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from train_fixtures import train_args

from heartlora.cli import main
from heartlora.training.trainer import Trainer

METHODS = ["linear", "full", "lora", "heart-lora", "heart-lora-layer", "peft-lora"]


@pytest.fixture(scope="module")
def method_runs(toy, tmp_path_factory):
    """Two-epoch runs of the toy task (ne=2), one per method, each made once per module:
    ``method_runs(method)`` gives the run's folder."""
    root, checkpoint = toy
    made = {}

    def run(method):
        if method not in made:
            out = tmp_path_factory.mktemp("methods") / method
            assert main(train_args(root, checkpoint, out, method, ne=2)) == 0
            made[method] = out
        return made[method]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_end_to_end(method_runs, method):
    out = method_runs(method)
    result = json.loads((out / "result.json").read_text())
    for key in (
        "method",
        "task",
        "best_accuracy",
        "final_accuracy",
        "trainable_parameters",
        "adapter_bytes",
        "wall_seconds",
        "active_heads_per_layer",
    ):
        assert result[key] is not None or (
            key == "active_heads_per_layer" and method in ("linear", "full", "peft-lora")
        ), key
    assert 0 <= result["final_accuracy"] <= 100
    assert result["adapter_bytes"] > 0
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,")
    assert any((out / "tensorboard").iterdir())
    if method == "heart-lora":
        assert result["active_heads_per_layer"] == [4] * 6
    if method == "lora":
        assert result["active_heads_per_layer"] == [6] * 6
    if method == "peft-lora":  # peft's own folder, staged beside it and moved in
        from peft import PeftModel

        files = sorted(p.name for p in (out / "adapter").iterdir())
        assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        assert not [p for p in out.iterdir() if p.name.startswith(".adapter")]
        base = timm.create_model("vit_mini_patch4_28", num_classes=result["num_classes"])
        PeftModel.from_pretrained(base, out / "adapter")  # loads as peft wrote it


@pytest.mark.slow
def test_heart_lora_stores_fewer_parameters_than_lora(method_runs):
    results = {
        method: json.loads((method_runs(method) / "result.json").read_text())
        for method in ("lora", "heart-lora-layer")
    }
    assert (
        results["heart-lora-layer"]["trainable_parameters"]
        < results["lora"]["trainable_parameters"]
    )
    assert results["heart-lora-layer"]["adapter_bytes"] < results["lora"]["adapter_bytes"]


@pytest.mark.slow
def test_training_learns_the_toy_task(toy, tmp_path):
    root, checkpoint = toy
    assert main(train_args(root, checkpoint, tmp_path / "run", "full", epochs=6)) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["best_accuracy"] > 60  # chance is 33 %


@pytest.mark.slow
def test_refuses_a_directory_with_another_run(toy, tmp_path, capsys):
    root, checkpoint = toy
    args = train_args(root, checkpoint, tmp_path / "run", "linear", epochs=1)
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "holds another run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_config_errors_name_the_key(toy, tmp_path, capsys):
    root, checkpoint = toy
    config = tmp_path / "run.yaml"
    config.write_text("method: lora\nlerning_rate: 0.1\n")
    args = train_args(root, checkpoint, tmp_path / "run", "lora") + ["--config", str(config)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "lerning_rate" in err and len(err.strip().splitlines()) == 1
    assert main(train_args(root, checkpoint, tmp_path / "r2", "lora", epohcs=3)) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert main(train_args(root, checkpoint, tmp_path / "r3", "heart-lora", ne=6)) == 2
    assert "ne=6" in capsys.readouterr().err
    assert main(train_args(root, checkpoint, tmp_path / "r4", "heart_lora")) == 2
    assert "did you mean 'heart-lora'" in capsys.readouterr().err


# --- exact resume from any interruption point ----------------------------------------------------


@pytest.fixture(scope="module")
def reference_runs(toy, tmp_path_factory):
    """Uninterrupted heart-lora runs (ne=2, drop-path 0.1 as by default), one per set of
    ``train_args`` settings, each made once per module: ``reference_runs(**settings)`` gives
    the run's folder and what it printed."""
    root, checkpoint = toy
    made = {}

    def reference(**settings):
        key = tuple(sorted(settings.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("reference") / "run"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(train_args(root, checkpoint, out, "heart-lora", ne=2, **settings)) == 0
            made[key] = out, printed.getvalue()
        return made[key]

    return reference


@pytest.fixture(scope="module")
def reference_run(reference_runs):
    """The uninterrupted run of 3 epochs × 3 steps."""
    return reference_runs(epochs=3)[0]


def _assert_same_run(expected_dir, got_dir):
    """Bit-identical adapter tensors, metrics (all but the timings) and accuracies."""
    name = "adapter/heartlora_adapter.safetensors"
    a, b = load_file(str(expected_dir / name)), load_file(str(got_dir / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def metrics(directory):
        with open(directory / "metrics.csv") as handle:
            return [
                {k: v for k, v in row.items() if not k.endswith("seconds")}
                for row in csv.DictReader(handle)
            ]

    assert metrics(got_dir) == metrics(expected_dir)
    expected = json.loads((expected_dir / "result.json").read_text())
    got = json.loads((got_dir / "result.json").read_text())
    for key in ("best_accuracy", "final_accuracy", "active_heads_per_layer", "best_epoch"):
        assert got[key] == expected[key], key


def _on_training_forward(number, action):
    """A patch that calls ``action()`` from a forward hook on the last block, during the
    ``number``-th forward pass in training mode (inside an optimizer step, after drop-path drew
    its random numbers in the earlier blocks)."""

    def patch(patched):
        original_fit = Trainer.fit
        calls = {"n": 0}

        def hook(module, _inputs, _output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == number:
                    action()

        def fit(self):
            self.model.blocks[-1].register_forward_hook(hook)
            return original_fit(self)

        patched.setattr(Trainer, "fit", fit)

    return patch


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


def _on_train_step(number):
    """A patch that raises KeyboardInterrupt as the ``number``-th training step begins."""

    def patch(patched):
        original = Trainer._train_step
        calls = {"n": 0}

        def step_then_interrupt(self, *args):
            calls["n"] += 1
            if calls["n"] == number:
                raise KeyboardInterrupt
            return original(self, *args)

        patched.setattr(Trainer, "_train_step", step_then_interrupt)

    return patch


def _inside_the_weight_update(number):
    """A patch that raises KeyboardInterrupt inside the ``number``-th AdamW step."""

    def patch(patched):
        original_step = torch.optim.AdamW.step
        calls = {"n": 0}

        def step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == number:
                raise KeyboardInterrupt
            return original_step(self, *args, **kwargs)

        patched.setattr(torch.optim.AdamW, "step", step)

    return patch


class _Killed(Exception):
    """Raised where no handler saves anything: as SIGKILL."""


def _die():
    raise _Killed


def _checked_nothing(*_):
    pass


def _four_metrics_lines(stage, out, *_):
    if stage == "resumed":
        assert (out / "metrics.csv").read_text().count("\n") == 4


def _resume_overwrote_the_checkpoint(stage, out, *_):
    if stage == "resumed":
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        assert state["progress"]["epoch"] == 3


def _kept_the_epoch_1_checkpoint(stage, out, reference, reference_printed, printed):
    if stage == "interrupted":
        assert "keeps the state after epoch 1" in printed


def _checkpointed_before_the_first_step(stage, out, *_):
    """A fresh run checkpoints before its first step: a kill in epoch 1 loses nothing."""
    if stage == "interrupted":
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        assert state["progress"]["global_step"] == 0


def _sensitivities_resumed_bit_for_bit(stage, out, reference, reference_printed, printed):
    """Heads are scored after warm-up step 5; interrupted inside step 4, steps 1-3 are folded
    in (B is zero only in step 1), and the resumed run's scores are the reference's."""
    config = json.loads((reference / "adapter" / "heartlora_config.json").read_text())
    if stage == "interrupted":
        assert "calibrated with scorer sensitivity on 5 warm-up steps" in reference_printed
        assert config["config"]["scorer"] == "sensitivity"
        assert config["config"]["normalize_layers"] is True
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        assert state["sensitivity"]["steps"] == 3
    else:
        resumed = json.loads((out / "adapter" / "heartlora_config.json").read_text())
        assert resumed["scores"] == config["scores"]


_AUGMENTED = {"epochs": 2, "augment": "true"}
_SENSITIVITY = {
    "epochs": 3,
    "scorer": "sensitivity",
    "normalize_layers": "true",
    "calib_warmup_steps": 5,
}

# Forward passes in training mode are the steps, 1-3 | 4-6 | 7-9 (heads are scored in eval mode
# before step 3); 2 and 5 are mid-epoch, 9 the last step. Each case: the patch that interrupts,
# the interrupted run's exit code, the settings of all three runs, settings of the interrupted and
# resumed runs only, and a check called after the interrupted run and after the resume.
# Random crops and flips are drawn from each image's own seed: a run loading with workers,
# interrupted inside a step and resumed, is the uninterrupted run without workers.
_INTERRUPTIONS = [
    pytest.param(_on_train_step(4), 130, {"epochs": 3}, {}, _four_metrics_lines, id="ctrl-c"),
    *(
        pytest.param(
            _on_training_forward(number, _raise_keyboard_interrupt),
            130,
            {"epochs": 3},
            {},
            _checked_nothing,
            id=f"keyboard-interrupt-in-step-{number}",
        )
        for number in (2, 5, 9)
    ),
    pytest.param(
        _on_training_forward(5, lambda: os.kill(os.getpid(), signal.SIGINT)),
        130,
        {"epochs": 3},
        {},
        _resume_overwrote_the_checkpoint,
        id="sigint-finishes-the-step",
    ),
    pytest.param(
        _on_training_forward(4, lambda: os.kill(os.getpid(), signal.SIGTERM)),
        143,
        {"epochs": 3},
        {},
        _checked_nothing,
        id="sigterm-stops-at-a-boundary",
    ),
    pytest.param(
        _inside_the_weight_update(5),  # epoch 2, step 2
        130,
        {"epochs": 3},
        {},
        _kept_the_epoch_1_checkpoint,
        id="inside-the-weight-update",
    ),
    pytest.param(
        _on_training_forward(2, _die),
        1,  # an unexpected exception: one line and a saved traceback
        {"epochs": 3},
        {},
        _checkpointed_before_the_first_step,
        id="killed-in-the-first-epoch",
    ),
    *(
        pytest.param(
            _on_training_forward(5, _raise_keyboard_interrupt),
            130,
            _AUGMENTED,
            {"num_workers": workers},
            _checked_nothing,
            id=f"augmented-with-{workers}-workers",
        )
        for workers in (0, 2)
    ),
    pytest.param(
        _on_training_forward(4, _raise_keyboard_interrupt),
        130,
        _SENSITIVITY,
        {},
        _sensitivities_resumed_bit_for_bit,
        id="sensitivity-scorer-warm-up",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("interrupt", "code", "settings", "extra", "check"), _INTERRUPTIONS)
def test_an_interrupted_run_resumes_bit_for_bit(
    toy, tmp_path, monkeypatch, capsys, reference_runs, interrupt, code, settings, extra, check
):
    """Interrupted (``interrupt`` patched in, ``extra`` settings) and resumed (without the
    patch), a run ends as the uninterrupted one with ``settings``, bit for bit."""
    reference, reference_printed = reference_runs(**settings)
    root, checkpoint = toy
    out = tmp_path / "run"
    args = train_args(root, checkpoint, out, "heart-lora", ne=2, **settings, **extra)
    with monkeypatch.context() as patched:
        interrupt(patched)
        assert main(args) == code
    assert not (out / "result.json").exists()
    check("interrupted", out, reference, reference_printed, capsys.readouterr().out)
    assert main([*args, "--resume"]) == 0
    _assert_same_run(reference, out)
    check("resumed", out, reference, reference_printed, capsys.readouterr().out)


def test_one_epoch_heart_lora_fits_the_head_scoring_warm_up_to_the_run(toy, tmp_path, capsys):
    root, checkpoint = toy  # 48 training images, batch 16: a 3-step run
    args = train_args(root, checkpoint, tmp_path / "run", "heart-lora", epochs=1, ne=2)
    at = args.index("calib_warmup_steps=2")
    del args[at - 1 : at + 1]  # left null: fitted to the run's length
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("note: heads are scored after 1 of the run's 3 steps") == 1
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["active_heads_per_layer"] == [4] * 6
    config = json.loads((tmp_path / "run" / "adapter" / "heartlora_config.json").read_text())
    assert config["config"]["calib_warmup_steps"] == 1  # what the run used
    # set by hand, a warm-up as long as the run is still an error
    bad = train_args(root, checkpoint, tmp_path / "bad", "heart-lora", epochs=1, ne=2)
    assert main([*bad, "--set", "calib_warmup_steps=3"]) == 2
    assert "calib_warmup_steps=3 must be smaller than the run's 3 steps" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_heart_lora_compiles_after_calibration_and_matches_eager(
    toy, tmp_path, monkeypatch, reference_run
):
    """`compile: true`: the warm-up runs eagerly, the model is compiled (fullgraph) once the
    heads are deactivated, and the run computes what the eager run computes."""
    root, checkpoint = toy
    compiled = []
    real_compile = torch.compile

    def compile_for_tests(model, **kwargs):
        compiled.append((model, kwargs))
        return real_compile(model, backend="aot_eager", **kwargs)  # no C++ codegen in tests

    monkeypatch.setattr(torch, "compile", compile_for_tests)
    out = tmp_path / "run"
    args = train_args(root, checkpoint, out, "heart-lora", epochs=3, ne=2, compile="true")
    assert main(args) == 0
    assert len(compiled) == 1 and compiled[0][1] == {"fullgraph": True}
    qkv = compiled[0][0].blocks[0].attn.qkv
    assert qkv.active_heads == qkv.num_heads - 2  # compiled after deactivation
    expected = load_file(str(reference_run / "adapter/heartlora_adapter.safetensors"))
    got = load_file(str(out / "adapter/heartlora_adapter.safetensors"))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_metrics_split_each_epoch_into_steps_and_data_waiting(method_runs):
    with open(method_runs("lora") / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        seconds, step, data = (float(row[k]) for k in ("seconds", "step_seconds", "data_seconds"))
        rounding = 0.006  # seconds has two decimals, the parts three
        assert 0 < step and 0 < data and step + data <= seconds + rounding


def test_cache_device_needs_the_cache(toy, tmp_path, capsys):
    root, checkpoint = toy
    args = train_args(root, checkpoint, tmp_path / "run", "lora", cache_device="cuda")
    assert main(args) == 2
    assert "cache_device 'cuda' needs cache_images: true" in capsys.readouterr().err


@pytest.mark.slow
def test_model_kwargs_build_the_base_and_travel_with_the_adapter(toy, tmp_path, capsys):
    from heartlora.tools.serving import base_model_from_adapter

    root, checkpoint = toy  # a 6-head checkpoint: the same tensors read as 3 heads of 32 dims
    out = tmp_path / "run"
    args = train_args(root, checkpoint, out, "heart-lora", epochs=2, ne=1)
    assert main([*args, "--set", "model_kwargs={num_heads: 3}"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["active_heads_per_layer"] == [2] * 6
    metadata = json.loads((out / "adapter" / "heartlora_config.json").read_text())
    assert metadata["extra"]["model_kwargs"] == {"num_heads": 3}
    rebuilt = base_model_from_adapter(out / "adapter")
    assert rebuilt.blocks[0].attn.num_heads == 3
    for bad, message in (
        ("model_kwargs=3", "model_kwargs must be a mapping of strings to values, got 3"),
        ("model_kwargs={num_classes: 3}", "model_kwargs: num_classes is set by the run itself"),
    ):
        assert main([*args, "--set", bad]) == 2
        assert message in capsys.readouterr().err


class _HostReads(TorchDispatchMode):
    """Records the reads of a tensor's value on the host (``.item()``, ``bool()``, ``float()``
    and ``nonzero`` go through the dispatcher; ``tolist`` does not, so it is wrapped) and the
    backward passes, in order. On a GPU each read is a synchronisation: the host waits for the
    device. Reads inside AdamW's step are not recorded: they are its step counters, host
    tensors on every device (and the fused AdamW the trainer uses on CUDA reads nothing)."""

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        self.events: list[str] = []
        self.in_optimizer = False
        tolist, backward, step = torch.Tensor.tolist, torch.Tensor.backward, torch.optim.AdamW.step

        def recorded_tolist(tensor):
            self.events.append("read")
            return tolist(tensor)

        def recorded_backward(tensor, *args, **kwargs):
            self.events.append("backward")
            return backward(tensor, *args, **kwargs)

        def unrecorded_step(optimizer, *args, **kwargs):
            self.in_optimizer = True
            try:
                return step(optimizer, *args, **kwargs)
            finally:
                self.in_optimizer = False

        monkeypatch.setattr(torch.Tensor, "tolist", recorded_tolist)
        monkeypatch.setattr(torch.Tensor, "backward", recorded_backward)
        monkeypatch.setattr(torch.optim.AdamW, "step", unrecorded_step)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_optimizer and func in (
            torch.ops.aten._local_scalar_dense.default,
            torch.ops.aten.nonzero.default,
        ):
            self.events.append("read")
        return func(*args, **(kwargs or {}))


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["taylor", "sensitivity"])
def test_the_loop_reads_each_step_once_while_the_next_is_queued(toy, tmp_path, monkeypatch, scorer):
    """One host read per step, of the previous step's numbers after the next backward is
    queued (on a GPU the host never waits on an idle device), and one for the epoch's last
    step: an epoch of 6 steps reads 3 times more than one of 3 steps."""
    root, checkpoint = toy
    epochs: dict[int, list[list[str]]] = {}
    original = Trainer._train_epoch

    def recorded_epoch(self, stop):
        with _HostReads(monkeypatch) as reads:
            original(self, stop)
        epochs.setdefault(self.config.batch_size, []).append(reads.events)
        monkeypatch.undo()  # unwrap what _HostReads patched; keep recording the next epoch
        monkeypatch.setattr(Trainer, "_train_epoch", recorded_epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", recorded_epoch)
    for batch_size in (16, 8):  # 48 images: 3 and 6 steps per epoch
        args = train_args(root, checkpoint, tmp_path / str(batch_size), "heart-lora", ne=2)
        args[args.index("--batch-size") + 1] = str(batch_size)
        assert main([*args, "--set", f"scorer={scorer}", "--set", "calib_batches=1"]) == 0
    (_, trained_3), (_, trained_6) = epochs[16], epochs[8]  # epoch 2: heads chosen
    assert trained_6.count("read") - trained_3.count("read") == 3, epochs
    steps = trained_6[trained_6.index("backward") :]
    assert steps == ["backward"] + ["backward", "read"] * 5 + ["read"], steps


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [16, 20])  # 48 images: 16 × 3, or 20 + 20 + 8
def test_compiled_training_compiles_once_whatever_the_batch_sizes(toy, tmp_path, batch_size):
    """An epoch whose last batch is smaller compiles one graph, batch size dynamic, not one
    per batch size (dynamo alone recompiles at the first smaller batch), and trains as the
    eager run does."""
    from torch._dynamo.testing import CompileCounterWithBackend

    root, checkpoint = toy
    counter = CompileCounterWithBackend("aot_eager")  # no C++ codegen in tests
    real_compile = torch.compile
    torch._dynamo.reset()
    runs = {}
    for mode in ("eager", "compiled"):
        runs[mode] = tmp_path / mode
        args = train_args(root, checkpoint, runs[mode], "heart-lora", ne=2)
        args[args.index("--batch-size") + 1] = str(batch_size)
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(
                torch, "compile", lambda model, **kw: real_compile(model, backend=counter, **kw)
            )
            assert main([*args, "--set", f"compile={mode == 'compiled'}"]) == 0
    assert counter.frame_count == 1
    name = "adapter/heartlora_adapter.safetensors"
    expected, got = (load_file(str(runs[mode] / name)) for mode in ("eager", "compiled"))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


def test_loader_workers_are_started_once_for_training_and_once_for_evaluation(
    toy, tmp_path, monkeypatch
):
    """Without augmentation nothing draws in the workers: the training loader and the
    evaluation loader each keep theirs for the whole run (3 epochs, evaluated after each)."""
    root, checkpoint = toy
    started = []
    original = torch.utils.data.DataLoader.__init__

    def counted(self, *args, **kwargs):
        if kwargs.get("num_workers", 0) > 0:
            started.append(kwargs.get("persistent_workers", False))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", counted)
    args = train_args(root, checkpoint, tmp_path / "run", "lora", epochs=3, num_workers=1)
    assert main(args) == 0
    assert started == [True, True]
