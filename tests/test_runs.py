"""The run folder of every method (`heartlora.tools.runs`): `heartlora predict` and `heartlora
export` rebuild the run's model from its config.yaml and what its method stored, and give what
the trained model itself gives."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from tiny_models import images, tiny_vit
from train_fixtures import make_base_checkpoint, make_learnable_task

from heartlora.cli import main
from heartlora.config import HeartLoRAConfig
from heartlora.data.base import open_image
from heartlora.data.transforms import build_transform
from heartlora.tools.runs import merged_run_state
from heartlora.training.config import build_config
from heartlora.training.methods import PEFT_METHODS, MethodSettings, wrap_with_peft
from heartlora.training.run_directory import write_run_config
from heartlora.training.trainer import Trainer

RUN_METHODS = {
    "peft-lora": {"rank": 2},
    "peft-dora": {"rank": 2},
    "peft-rslora": {"rank": 2},
    "peft-pissa": {"rank": 2},
    "peft-adalora": {"rank": 2},
    "bitfit": {},
    "linear": {},
    "full": {},
    "lora": {"rank": 2},
}
"""The LoRA-like peft methods, the state-dict methods, and a heartlora adapter beside them."""

NORMALIZE = "[[0.4, 0.5, 0.6], [0.2, 0.3, 0.25]]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each method of `RUN_METHODS` trained one epoch (2 steps) into a run folder, and the
    softmax of its trained model on six test images: ``(paths, {method: (run, probs)})``."""
    root = tmp_path_factory.mktemp("runs")
    make_learnable_task(root)
    checkpoint = make_base_checkpoint(root / "base.safetensors")
    paths = sorted((root / "toy" / "images" / "test").glob("*.png"))[:6]
    runs = {}
    for method, knobs in RUN_METHODS.items():
        settings = {
            "model": "vit_mini_patch4_28",
            "checkpoint": str(checkpoint),
            "data_root": str(root),
            "task": "toy",
            "train_split": "train800",
            "eval_split": "val200",
            "img_size": 28,
            "method": method,
            "epochs": 1,
            "batch_size": 16,
            "warmup_epochs": 0,
            "eval_every": 1,
            "lr": 0.01,
            "threads": 1,
            **knobs,
            **({"normalize": NORMALIZE} if method == "peft-dora" else {}),
        }
        config = build_config(None, [f"{key}={value}" for key, value in settings.items()])
        run = root / method
        trainer = Trainer(config, run, log=lambda *_: None)
        trainer.fit()
        write_run_config(run, config)  # what run_training writes around Trainer.fit
        transform = build_transform(28, normalize=config.normalize)
        batch = torch.stack([transform(open_image(path, hint=None)) for path in paths])
        with torch.no_grad():
            probabilities = trainer.model.eval()(batch).softmax(-1)
        runs[method] = (run, probabilities)
    return paths, runs


def test_predict_on_the_run_folder_of_every_method_gives_the_trained_models_classes(
    trained, capsys
):
    """`predict` took heartlora adapters only; now each run folder of another method is its own
    model (here beside a heartlora adapter on its shared backbone, in one call)."""
    paths, runs = trained
    argv = ["predict", "--json", *map(str, paths)]
    for run, _ in runs.values():
        argv += ["--adapter", str(run)]
    assert main(argv) == 0, capsys.readouterr().err
    output = json.loads(capsys.readouterr().out)
    names = {method: "toy" if i == 0 else f"toy#{i + 1}" for i, method in enumerate(runs)}
    for method, (_, probabilities) in runs.items():
        rows = [row for row in output["predictions"] if row["task"] == names[method]]
        assert [row["image"] for row in rows] == list(map(str, paths)), method
        top, classes = probabilities.max(-1)
        assert [row["class"] for row in rows] == classes.tolist(), method
        got = torch.tensor([row["probability"] for row in rows])
        torch.testing.assert_close(got, top, atol=1e-5, rtol=0, msg=method)
    memory = output["memory"]
    assert set(memory["run_model_bytes"]) == {names[m] for m in runs if m != "lora"}
    assert list(memory["task_bytes"]) == [names["lora"]]
    assert memory["total_bytes"] == memory["backbone_bytes"] + sum(
        [*memory["task_bytes"].values(), *memory["run_model_bytes"].values()]
    )


@pytest.mark.slow
def test_merged_exports_of_peft_dora_and_bitfit_predict_in_plain_timm_as_the_trained_model(
    trained, tmp_path, capsys
):
    """The recorded `load` line builds the merged DoRA (peft's merge_and_unload) and the BitFit
    model (base + biases) in plain timm, with the run's preprocessing (DoRA's normalize)."""
    paths, runs = trained
    lines, expected = [], []
    for method in ("peft-dora", "bitfit"):
        out = tmp_path / method
        argv = ["export", "--adapter", str(runs[method][0]), "--format", "merged"]
        assert main([*argv, "--output-dir", str(out)]) == 0, capsys.readouterr().err
        info = json.loads((out / "timm_model.json").read_text())
        assert f"load it with: {info['load']}" in capsys.readouterr().out
        lines.append(info["load"])
        expected.append(runs[method][1])
    assert json.loads((tmp_path / "peft-dora" / "timm_model.json").read_text())["pretrained_cfg"][
        "mean"
    ] == [0.4, 0.5, 0.6]
    code = """
import json, sys, timm.data, torch
from PIL import Image
out = []
for line in json.loads(sys.argv[1]):
    exec(line)
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in sys.argv[2:]])
    with torch.no_grad():
        out.append(model(batch).softmax(-1).tolist())
print(json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(lines), *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for got, want in zip(json.loads(done.stdout), expected):
        torch.testing.assert_close(torch.tensor(got), want, atol=1e-5, rtol=0)


def test_peft_export_copies_a_peft_run_and_refuses_the_state_dict_methods(
    trained, tmp_path, capsys
):
    paths, runs = trained
    run = runs["peft-dora"][0]
    out = tmp_path / "peft"
    assert (
        main(
            ["export", "--adapter", str(run / "adapter"), "--format", "peft"]
            + ["--output-dir", str(out)]
        )
        == 0
    )
    assert "PeftModel.from_pretrained" in capsys.readouterr().out
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (run / "adapter" / name).read_bytes()
    for method in ("bitfit", "linear", "full"):
        argv = ["export", "--adapter", str(runs[method][0]), "--format", "peft"]
        assert main([*argv, "--output-dir", str(tmp_path / method)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"a `{method}` run stores" in err, err
        assert "no peft adapter holds" in err and "--format merged" in err, err
        assert not (tmp_path / method / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("method", sorted(PEFT_METHODS))
def test_every_peft_method_merges_to_the_same_logits(method):
    """peft 0.21.2 merges all thirteen methods (OFT, BOFT, HRA, IA³, VeRA, FourierFT, LoHa and
    LoKr too); the merged model is plain timm and computes what the peft model computes."""
    knobs = {
        "peft-oft": {"block_size": 8},
        "peft-boft": {"block_size": 4},
        "peft-fourierft": {"n_frequency": 50},
    }.get(method, {})
    adapter = HeartLoRAConfig(rank=4 if method == "peft-vera" else 2)
    model = wrap_with_peft(tiny_vit(), method, MethodSettings(adapter, total_steps=10, **knobs))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        expected = model.eval()(images())
        state = merged_run_state(model, method)
        base = tiny_vit().state_dict()
        assert any(not torch.equal(state[key], base[key]) for key in base if key != "head.weight")
        plain = tiny_vit()
        plain.load_state_dict(state)  # strict: exactly timm's keys
        torch.testing.assert_close(plain.eval()(images()), expected, atol=1e-5, rtol=0)


def test_a_run_on_other_base_weights_is_refused_unless_told(trained, tmp_path, capsys):
    """A run's model is its base plus what it trained: `--checkpoint` with other weights would
    predict silently wrong, so it is refused as for an adapter; a full run needs no base."""
    paths, runs = trained
    other = make_base_checkpoint(tmp_path / "other.safetensors", seed=1)
    image = str(paths[0])
    argv = ["predict", "--adapter", str(runs["bitfit"][0]), image, "--checkpoint", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the run was trained on base weights" in err, err
    assert "--ignore-base-mismatch" in err, err
    assert main([*argv, "--ignore-base-mismatch"]) == 0
    full = ["predict", "--adapter", str(runs["full"][0]), image, "--checkpoint", str(other)]
    assert main(full) == 0, capsys.readouterr().err


def test_a_damaged_run_is_one_line_naming_its_adapter_folder(trained, tmp_path, capsys):
    """A truncated weights file was an internal error (safetensors' own exception type)."""
    paths, runs = trained
    for method, name in (
        ("peft-dora", "adapter_model.safetensors"),
        ("bitfit", "weights.safetensors"),
    ):
        run = tmp_path / method
        shutil.copytree(runs[method][0], run)
        weights = run / "adapter" / name
        weights.write_bytes(weights.read_bytes()[:100])
        for argv in (
            ["predict", "--adapter", str(run), str(paths[0])],
            [
                "export",
                "--adapter",
                str(run),
                "--format",
                "merged",
                "--output-dir",
                str(tmp_path / "m"),
            ],
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.startswith("heartlora: error: "), err
            assert f"{run / 'adapter'}: cannot load what the `{method}` run stored" in err, err
        assert not (tmp_path / "m" / "model.safetensors").exists()
