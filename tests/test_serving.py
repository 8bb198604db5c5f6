import json
import shutil

import pytest
import torch
from data_fixtures import make_vtab_task, write_image
from PIL import Image
from test_export import make_registered_adapter
from tiny_models import images, randomize_adapters, tiny_vit

import heartlora as hl
from heartlora.cli import main
from heartlora.data.transforms import build_transform
from heartlora.tools.serving import MultiTaskModel, base_mismatch, base_model_from_adapter


def _tiny_adapter(tmp_path, name, num_classes, targets, ne, seed):
    model = tiny_vit(num_classes=num_classes)
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=targets, ne=ne, mode="layer"))
    randomize_adapters(model, seed=seed)
    hl.deactivate_heads(model, torch.rand(2, 4, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        model.get_classifier().weight.normal_(generator=torch.Generator().manual_seed(seed))
    return hl.save_adapter(model, tmp_path / name)


@pytest.fixture
def two_tasks(tmp_path):
    return {
        "a": _tiny_adapter(tmp_path, "a", 3, ("q", "v"), 1, seed=1),
        "b": _tiny_adapter(tmp_path, "b", 5, ("q", "k", "v", "proj"), 2, seed=2),
    }


@pytest.mark.parametrize("order", [["a", "b", "a", "b"], ["b", "a", "a", "b"]])
def test_switching_tasks_gives_each_task_its_alone_outputs(two_tasks, order):
    server = MultiTaskModel(tiny_vit())
    for name in sorted(two_tasks, reverse=order[0] == "b"):
        server.add_task(name, two_tasks[name])
    x = images()
    alone = {name: hl.load_adapter(tiny_vit(), d)(x) for name, d in two_tasks.items()}
    for name in order:
        assert torch.equal(server(x, name), alone[name])
    assert server(x, "b").shape == (4, 5) and server(x, "a").shape == (4, 3)
    server.use(None)
    assert torch.equal(server.model(x), tiny_vit()(x))  # the backbone itself is untouched


def test_memory_report_counts_the_backbone_once(two_tasks):
    server = MultiTaskModel(tiny_vit())
    for name, directory in two_tasks.items():
        server.add_task(name, directory)
    report = server.memory_report()
    base = tiny_vit()
    head = {id(p) for p in base.head.parameters()}
    backbone = sum(p.numel() * 4 for p in base.parameters() if id(p) not in head)
    assert report["backbone_bytes"] == backbone
    for name, directory in two_tasks.items():
        alone = hl.load_adapter(tiny_vit(), directory)
        lora = sum(p.numel() * 4 for p in hl.adapter_parameters(alone))
        classifier = sum(p.numel() * 4 for p in alone.head.parameters())
        assert lora + classifier < report["task_bytes"][name] < lora + classifier + 2048
    assert report["total_bytes"] == backbone + sum(report["task_bytes"].values())
    assert report["separate_models_bytes"] > report["total_bytes"] + backbone - 1


def test_serving_errors(two_tasks):
    server = MultiTaskModel(tiny_vit())
    server.add_task("a", two_tasks["a"])
    with pytest.raises(hl.HeartLoRAError, match="already loaded"):
        server.add_task("a", two_tasks["b"])
    with pytest.raises(hl.HeartLoRAError, match="unknown task 'c'"):
        server.predict(images(), "c")
    with pytest.raises(hl.HeartLoRAError, match="without heartlora adapters"):
        MultiTaskModel(hl.load_adapter(tiny_vit(), two_tasks["a"]))


def test_base_model_from_adapter_rebuilds_the_trained_backbone(tmp_path):
    directory, model, _ = make_registered_adapter(tmp_path)
    rebuilt = hl.load_adapter(base_model_from_adapter(directory), directory)
    assert torch.equal(rebuilt(images()), model(images()))
    with pytest.raises(hl.HeartLoRAError, match="does not exist"):
        base_model_from_adapter(directory, checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(hl.HeartLoRAError, match="unknown timm model 'nope'"):
        base_model_from_adapter(directory, model_name="nope")


def test_predict_cli_classifies_each_image_with_each_task(tmp_path, capsys):
    a, model_a, _ = make_registered_adapter(tmp_path, "taska", num_classes=3, seed=1)
    b, model_b, _ = make_registered_adapter(tmp_path, "taskb", num_classes=4, seed=2, ne=2)
    paths = [write_image(tmp_path / "x.png", (20, 14), value=40), tmp_path / "y.jpg"]
    Image.effect_noise((16, 16), 60).convert("RGB").save(paths[1])
    args = ["predict", "--adapter", str(a), "--adapter", str(b), *map(str, paths)]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    transform = build_transform(16)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        expected = {"taska": model_a(batch).softmax(-1), "taskb": model_b(batch).softmax(-1)}
    rows = result["predictions"]
    assert [(r["image"], r["task"]) for r in rows] == [
        (str(p), t) for p in paths for t in ("taska", "taskb")
    ]
    for row in rows:
        probs = expected[row["task"]][[str(p) for p in paths].index(row["image"])]
        assert row["class"] == int(probs.argmax())
        assert row["probability"] == pytest.approx(float(probs.max()), abs=1e-6)
    assert set(result["memory"]["task_bytes"]) == {"taska", "taskb"}
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "memory: backbone" in out and "memory: task taskb adds" in out


def test_predict_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    a, _, _ = make_registered_adapter(tmp_path)
    assert main(["predict", "--adapter", str(a), str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert "missing.png does not exist" in err and err.count("\n") == 1
    assert main(["predict", "--adapter", str(tmp_path / "nope"), str(tmp_path / "x.png")]) == 2
    assert "no heartlora adapter here" in capsys.readouterr().err


def test_predict_cli_device_and_dtype(tmp_path, capsys):
    a, _, _ = make_registered_adapter(tmp_path)
    image = write_image(tmp_path / "x.png", (20, 14), value=40)
    args = ["predict", "--adapter", str(a), str(image), "--json"]
    assert main(args) == 0  # auto: the CPU here
    expected = json.loads(capsys.readouterr().out)["predictions"]
    assert main([*args, "--device", "cpu", "--dtype", "bf16"]) == 0  # the CPU computes in fp32
    assert json.loads(capsys.readouterr().out)["predictions"] == expected
    for device, message in (
        ("tpu", "--device: expected one of auto, cpu, cuda, cuda:N"),
        ("cuda:7", "CUDA"),
    ):
        if device == "cuda:7" and torch.cuda.device_count() > 7:
            continue
        assert main([*args, "--device", device]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def _record_weights(directory, weights: str | None, checkpoint: str | None = None) -> None:
    """Rewrite the base weights an adapter's metadata records (as a training run writes them)."""
    path = directory / "heartlora_config.json"
    data = json.loads(path.read_text())
    data["extra"]["weights"] = weights
    data["extra"]["checkpoint"] = checkpoint
    path.write_text(json.dumps(data))


def test_base_mismatch_compares_what_would_load_with_what_was_trained_on():
    assert base_mismatch(None, "any.pth") is None  # adapters from before the record
    assert base_mismatch("/a/base.safetensors") is None
    assert base_mismatch("/a/base.safetensors", "/elsewhere/base.safetensors") is None  # moved
    assert "this loads 'other.pth'" in base_mismatch("/a/base.safetensors", "other.pth")
    assert base_mismatch("pretrained:augreg_in21k", model_name="vit_base_patch16_224") is None
    assert "this loads 'pretrained:in1k'" in base_mismatch(
        "pretrained:augreg_in21k", model_name="vit_base_patch16_224.in1k"
    )
    assert "cannot be rebuilt" in base_mismatch("random")


def test_predict_and_export_refuse_another_base_unless_told(tmp_path, capsys):
    a, model, checkpoint = make_registered_adapter(tmp_path)
    _record_weights(a, str(checkpoint), str(checkpoint))
    other = tmp_path / "other.safetensors"
    other.write_bytes(checkpoint.read_bytes())
    image = write_image(tmp_path / "x.png", (16, 16), value=40)
    predict = ["predict", "--adapter", str(a), str(image), "--checkpoint", str(other)]
    assert main(predict) == 2
    err = capsys.readouterr().err
    assert f"trained on base weights '{checkpoint}', this loads '{other}'" in err
    assert "--ignore-base-mismatch" in err and err.count("\n") == 1
    assert main([*predict, "--ignore-base-mismatch"]) == 0
    capsys.readouterr()
    export = ["export", "--adapter", str(a), "--output-dir", str(tmp_path / "m"), "--checkpoint"]
    assert main([*export, str(other), "--format", "merged"]) == 2
    assert "trained on base weights" in capsys.readouterr().err
    assert main([*export, str(other), "--format", "peft"]) == 0  # reads no base weights
    assert main([*export, str(other), "--format", "merged", "--ignore-base-mismatch"]) == 0
    make_vtab_task(tmp_path / "data", "toy")  # heads loads the base to score training images
    heads = ["heads", "--adapter", str(a), "--output-dir", str(tmp_path / "h"), "--checkpoint"]
    heads += [str(other), "--data-root", str(tmp_path / "data"), "--task", "toy"]
    capsys.readouterr()
    assert main(heads) == 2
    assert "trained on base weights" in capsys.readouterr().err
    assert main([*heads, "--ignore-base-mismatch"]) == 0
    capsys.readouterr()
    _record_weights(a, "random")
    assert main(["predict", "--adapter", str(a), str(image)]) == 2
    assert "randomly initialised base (weights: random), which cannot be rebuilt" in (
        capsys.readouterr().err
    )


def test_an_adapter_on_timms_pretrained_weights_rebuilds_them_from_the_cache(tmp_path, monkeypatch):
    directory, model, checkpoint = make_registered_adapter(tmp_path)
    _record_weights(directory, "pretrained:r160_in1k")
    # the base weights sit in the Hugging Face cache, where timm's download would put them
    cache = tmp_path / "hf-cache"
    repo = cache / "models--timm--test_vit.r160_in1k"
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    shutil.copy(checkpoint, repo / "snapshots" / "c0ffee" / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    rebuilt = hl.load_adapter(base_model_from_adapter(directory), directory)
    assert torch.equal(rebuilt(images()), model(images()))
    with pytest.raises(hl.HeartLoRAError, match="this loads 'pretrained:other'"):
        base_model_from_adapter(directory, model_name="test_vit.other")


def test_predict_decodes_one_batch_of_images_at_a_time(tmp_path, capsys, monkeypatch):
    """`predict` decoded every image before the first forward pass: memory grew with the
    number of images. Now at most --batch-size decoded images are alive at a forward, and
    the predictions are the same as in one batch."""
    import heartlora.commands.predict as predict_command

    a, _, _ = make_registered_adapter(tmp_path, "taska", num_classes=3, seed=1)
    paths = [write_image(tmp_path / f"{i}.png", (20, 14), value=10 * i) for i in range(7)]
    args = ["predict", "--adapter", str(a), "--json", *map(str, paths)]
    assert main([*args, "--batch-size", "7"]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"]
    decoded, at_forward = [], []
    original_open, original_predict = predict_command.open_image, MultiTaskModel.predict

    def counting_open(path, hint=None):
        decoded.append(path)
        return original_open(path, hint=hint)

    def counting_predict(self, batch, task):
        at_forward.append((len(decoded), len(batch)))
        return original_predict(self, batch, task)

    monkeypatch.setattr(predict_command, "open_image", counting_open)
    monkeypatch.setattr(MultiTaskModel, "predict", counting_predict)
    assert main([*args, "--batch-size", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert at_forward == [(3, 3), (6, 3), (7, 1)]
    assert [r["class"] for r in rows] == [r["class"] for r in expected]
    assert [r["probability"] for r in rows] == pytest.approx([r["probability"] for r in expected])
