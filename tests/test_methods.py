"""The peft field and BitFit (`heartlora.training.methods`): each method trains through the
trainer, stores, reloads onto a fresh base with the same logits, resumes exactly, refuses the
knobs it lacks in one line, and can be byte-matched (`heartlora.training.budget`)."""

import csv
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_learnable_task, train_args

from heartlora.cli import main
from heartlora.errors import HeartLoRAError
from heartlora.training.config import build_config
from heartlora.training.method_specs import parse_method, split_top_level
from heartlora.training.methods import METHODS, load_trained
from heartlora.training.trainer import Trainer, create_run_model

NEW_METHODS = {
    "peft-dora": {"rank": 2},
    "peft-rslora": {"rank": 2},
    "peft-pissa": {"rank": 2},
    "peft-adalora": {"rank": 2},
    "peft-vera": {"rank": 4},
    "peft-loha": {"rank": 2},
    "peft-lokr": {"rank": 2},
    "peft-oft": {"block_size": 8},
    "peft-boft": {"block_size": 4},
    "peft-fourierft": {"n_frequency": 50},
    "peft-ia3": {},
    "peft-hra": {"rank": 2},
    "bitfit": {},
}
"""Every method added with the peft field, with a small size."""


def _config(toy, method: str, epochs: int = 1, **knobs):
    root, checkpoint = toy
    settings = {
        "model": "vit_mini_patch4_28",
        "checkpoint": str(checkpoint),
        "data_root": str(root),
        "task": "toy",
        "train_split": "train800",  # 32 images: 2 steps of 16 per epoch
        "eval_split": "val200",
        "img_size": 28,
        "method": method,
        "epochs": epochs,
        "batch_size": 16,
        "warmup_epochs": 0,
        "eval_every": epochs,
        "lr": 0.01,
        "threads": 1,
        **knobs,
    }
    return build_config(None, [f"{key}={value}" for key, value in settings.items()])


def test_every_new_method_is_registered():
    assert set(NEW_METHODS) <= set(METHODS)


@pytest.mark.parametrize("method", list(NEW_METHODS))
def test_new_method_trains_stores_and_reloads_with_the_same_logits(toy, tmp_path, method):
    config = _config(toy, method, **NEW_METHODS[method])
    trainer = Trainer(config, tmp_path, log=lambda *_: None)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.fit()
    changed = [
        n
        for n, p in trainer.model.named_parameters()
        if n in before and not torch.equal(p, before[n])
    ]
    assert changed, "nothing trained"
    assert result["adapter_bytes"] > 0
    images = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainer.model.eval()(images)
        fresh = create_run_model(config, trainer.num_classes, log=lambda *_: None)
        reloaded = load_trained(fresh, method, tmp_path / "adapter").eval()
        got = reloaded(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_adalora_penalty_is_the_orthogonal_regulariser_peft_adds_to_a_loss(toy, tmp_path):
    config = _config(toy, "peft-adalora", rank=2)
    trainer = Trainer(config, tmp_path, log=lambda *_: None)
    with torch.no_grad():  # away from the identity, so the distance is not zero
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    ours = trainer.step_hook.penalty()
    # peft's AdaLoraModel adds the same term itself when its model's output carries a loss
    tuner = trainer.model.base_model
    tuner.model.forward = lambda *args, **kwargs: SimpleNamespace(loss=torch.zeros(()))
    theirs = tuner(torch.zeros(1, 3, 28, 28)).loss
    assert ours.item() > 0.1
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    assert all(p.grad is not None for p in trainer.step_hook._left + trainer.step_hook._right)


class _Killed(Exception):
    """Ends a run right after a checkpoint, as SIGKILL would."""


@pytest.mark.parametrize("method", ["peft-dora", "peft-adalora", "bitfit"])
def test_killed_after_an_epoch_resumes_to_the_same_weights(toy, tmp_path, monkeypatch, method):
    config = _config(toy, method, epochs=3, **NEW_METHODS[method])
    Trainer(config, tmp_path / "ref", log=lambda *_: None).fit()

    save = Trainer.save_resume_state

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if not args and self.progress.epoch == 1:  # the checkpoint at the end of epoch 1
            raise _Killed

    monkeypatch.setattr(Trainer, "save_resume_state", save_then_die)
    with pytest.raises(_Killed):
        Trainer(config, tmp_path / "run", log=lambda *_: None).fit()
    monkeypatch.setattr(Trainer, "save_resume_state", save)
    resumed = Trainer(config, tmp_path / "run", log=lambda *_: None)
    resumed.load_resume_state()
    assert resumed.progress.epoch == 1
    resumed.fit()

    a = load_file(str(next((tmp_path / "ref" / "adapter").glob("*.safetensors"))))
    b = load_file(str(next((tmp_path / "run" / "adapter").glob("*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if method == "peft-adalora":  # the budget pruned ranks: 6 layers from init_r 3 toward 2
        kept = sum(v.numel() for k, v in a.items() if "lora_E" in k)
        assert 6 * 2 <= kept < 6 * 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("peft-ia3[rank=8]", "peft-ia3 has no rank (its settings: peft_options)"),
        ("peft-vera[scale=2]", "peft-vera has no scale (its settings: rank, peft_options)"),
        ("bitfit[n_frequency=100]", "bitfit has no n_frequency (its settings: none)"),
    ],
)
def test_a_knob_the_method_lacks_is_refused_in_one_line(text, message):
    with pytest.raises(HeartLoRAError) as error:
        parse_method(text)
    assert str(error.value) == message


def test_train_keys_and_peft_options_are_checked_against_the_method(toy, tmp_path):
    with pytest.raises(HeartLoRAError, match="^peft-ia3 has no rank "):
        _config(toy, "peft-ia3", rank=8)
    with pytest.raises(HeartLoRAError, match="^peft-dora has no block_size "):
        _config(toy, "peft-dora", block_size=8)
    with pytest.raises(HeartLoRAError, match="AdaLoraConfig has no field 'init_rank'.*'init_r'"):
        _config(toy, "peft-adalora", peft_options="{init_rank: 4}")
    shared = tmp_path / "task.yaml"  # a task's tuned scale is a shared setting
    shared.write_text("scale: 10\nrank: 4\n")
    assert build_config(shared, ["method=peft-ia3"], check_method_keys_given=True).scale == 10
    with pytest.raises(
        HeartLoRAError, match="^lora has no peft_options .its settings: rank, scale"
    ):
        build_config(None, ["method=lora", "peft_options={r: 2}"])
    assert parse_method("peft-adalora[rank=4,peft_options={init_r: 6, tinit: 1}]") == (
        "peft-adalora",
        {"rank": 4, "peft_options": {"init_r": 6, "tinit": 1}},
    )


def test_heartlora_train_refuses_a_flag_the_method_lacks_in_one_line(toy, tmp_path, capsys):
    root, checkpoint = toy
    assert main(train_args(root, checkpoint, tmp_path / "run", "peft-ia3")) == 2  # --rank 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "peft-ia3 has no rank (its settings: peft_options)" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_suite_runs_the_new_methods_with_shared_settings_and_bracket_sizes(tmp_path, capsys):
    root = make_learnable_task(tmp_path / "mine", task="alpha")
    out = tmp_path / "suite"
    methods = "peft-dora[rank=2],peft-adalora[rank=2,peft_options={init_r: 4, tinit: 1}],peft-ia3"
    args = ["suite", "--data-root", str(root), "--epochs", "1", "--methods", methods,
            "--jobs", "1", "--output-dir", str(out), "--set", "batch_size=16",
            "--set", "scale=2"]  # fmt: skip
    assert main(args) == 0  # scale, shared, reaches peft-ia3, which has none: no refusal
    rows = {row["method"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == set(split_top_level(methods))
    assert all(int(row["adapter_bytes"]) > 0 for row in rows.values())
    capsys.readouterr()
    bad = ["suite", "--data-root", str(root), "--methods", "peft-ia3[rank=8]",
           "--output-dir", str(tmp_path / "bad")]  # fmt: skip
    assert main(bad) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("peft-ia3 has no rank (its settings: peft_options)")
    )
