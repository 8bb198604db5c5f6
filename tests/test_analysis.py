import json

import pytest
import timm
import torch
from data_fixtures import make_vtab_task
from PIL import Image
from safetensors.torch import save_file
from test_export import make_registered_adapter
from tiny_models import randomize_adapters, tiny_swin

import heartlora as hl
from heartlora.cli import main
from heartlora.tools.analysis import (
    DPI,
    HEADS_JSON,
    OVERLAP_JSON,
    OVERLAP_MD,
    REDUNDANCY_PNG,
    RESPONSIVENESS_PNG,
    TASK_HEADS_PNG,
    adapter_head_report,
    compare_tasks,
    jaccard,
    plot_responsiveness,
    redundancy_figsize,
    responsiveness_figsize,
    task_heads_figsize,
)


def _png_size(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _pixels(figsize: tuple[float, float]) -> tuple[int, int]:
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


def test_heads_cli_plots_an_adapter_on_its_training_images(tmp_path, capsys):
    make_vtab_task(tmp_path / "data", "toy")
    dataset = {"kind": "vtab1k", "root": str(tmp_path / "data"), "task": "toy"}
    directory, model, _ = make_registered_adapter(tmp_path, dataset=dataset)
    out = tmp_path / "out"
    assert main(["heads", "--adapter", str(directory), "--output-dir", str(out)]) == 0
    assert _png_size(out / RESPONSIVENESS_PNG) == _pixels(responsiveness_figsize(2, 4))
    assert _png_size(out / REDUNDANCY_PNG) == _pixels(redundancy_figsize(2))
    heads = json.loads((out / HEADS_JSON).read_text())
    assert heads["task"] == "taska" and heads["num_heads"] == [4, 4]
    assert [len(row) for row in heads["scores"]] == [4, 4]
    assert heads["scores"] == [
        [pytest.approx(v) for v in row] for row in model.heartlora_scores.tolist()
    ]
    assert heads["head_masks"] == [m.tolist() for m in hl.head_masks(model)]
    assert len(heads["deactivated"]) == 2 and all(
        not heads["head_masks"][la][h] for la, h in heads["deactivated"]
    )
    similarity = torch.tensor(heads["similarity"])
    assert similarity.shape == (2, 4, 4)
    torch.testing.assert_close(similarity.diagonal(dim1=1, dim2=2), torch.ones(2, 4))
    assert torch.tensor(heads["redundancy"]).shape == (2, 4)
    assert "6 of 8 heads kept" in capsys.readouterr().out


def test_heads_skips_redundancy_with_a_line_when_the_training_images_moved(tmp_path, capsys):
    """docs/heads-and-export.md: redundancy.png is written only when the training images are
    known, otherwise a line says so; images that moved since training were an error."""
    make_vtab_task(tmp_path / "data", "toy")
    dataset = {"kind": "vtab1k", "root": str(tmp_path / "data"), "task": "toy"}
    directory, _, _ = make_registered_adapter(tmp_path, dataset=dataset)
    (tmp_path / "data").rename(tmp_path / "moved")
    out = tmp_path / "out"
    assert main(["heads", "--adapter", str(directory), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "taska: the adapter's training images cannot be read (" in printed
    assert "no redundancy plot (pass --data-root, --task)" in printed
    assert (out / RESPONSIVENESS_PNG).is_file() and not (out / REDUNDANCY_PNG).exists()
    # images the user names, or a scorer that needs them, are still an error
    argv = ["heads", "--adapter", str(directory), "--output-dir", str(out)]
    assert main([*argv, "--data-root", str(tmp_path / "data")]) == 2
    assert main([*argv, "--scorer", "grad-norm"]) == 2
    assert main([*argv, "--data-root", str(tmp_path / "moved")]) == 0
    assert (out / REDUNDANCY_PNG).is_file()


def test_heads_cli_scores_a_base_model_without_an_adapter(tmp_path):
    make_vtab_task(tmp_path / "data", "toy")
    torch.manual_seed(0)
    checkpoint = tmp_path / "base.safetensors"
    save_file(timm.create_model("test_vit", img_size=32).state_dict(), str(checkpoint))
    out = tmp_path / "out"
    common = ["heads", "--model", "test_vit", "--checkpoint", str(checkpoint), "--img-size", "32"]
    data = ["--data-root", str(tmp_path / "data"), "--task", "toy", "--output-dir", str(out)]
    assert main([*common, *data, "--scorer", "grad-norm", "--ne", "1"]) == 0
    heads = json.loads((out / HEADS_JSON).read_text())
    assert heads["scorer"] == "grad-norm" and heads["num_heads"] == [2] * 6
    assert [sum(mask) for mask in heads["head_masks"]] == [1] * 6
    assert all(v > 0 for row in heads["scores"] for v in row)
    assert main([*common, *data]) == 0  # default scorer: redundancy, no adapter at all
    heads = json.loads((out / HEADS_JSON).read_text())
    assert heads["scorer"] == "redundancy" and heads["deactivated"] == []
    assert heads["scores"] == [[pytest.approx(v) for v in row] for row in heads["redundancy"]]


def test_compare_tasks_and_the_cli_table(tmp_path, capsys):
    a, model_a, _ = make_registered_adapter(tmp_path, "taska", seed=1, ne=1)
    b, model_b, _ = make_registered_adapter(tmp_path, "taskb", seed=2, ne=2)
    kept = [
        {
            (la, h)
            for la, m in enumerate(hl.head_masks(model))
            for h, k in enumerate(m.tolist())
            if k
        }
        for model in (model_a, model_b)
    ]
    comparison = compare_tasks([a, b])
    assert comparison.tasks == ["taska", "taskb"]
    assert comparison.jaccard[0][1] == pytest.approx(
        len(kept[0] & kept[1]) / len(kept[0] | kept[1])
    )
    assert comparison.jaccard[0][0] == 1.0 and comparison.jaccard[1][0] == comparison.jaccard[0][1]
    out = tmp_path / "out"
    assert main(["heads", "--adapter", str(a), "--adapter", str(b), "--output-dir", str(out)]) == 0
    assert _png_size(out / TASK_HEADS_PNG) == _pixels(task_heads_figsize(2, 8))
    overlap = json.loads((out / OVERLAP_JSON).read_text())
    assert overlap["kept_heads"] == {"taska": 6, "taskb": 4} and overlap["total_heads"] == 8
    assert overlap["jaccard"] == [[pytest.approx(v) for v in row] for row in comparison.jaccard]
    table = (out / OVERLAP_MD).read_text()
    assert table.splitlines()[0] == "| task | kept | taska | taskb |" and "| taskb | 4/8 |" in table
    for task in ("taska", "taskb"):
        assert _png_size(out / task / RESPONSIVENESS_PNG)[0] > 0
        assert not (out / task / REDUNDANCY_PNG).exists()  # no training images known
    assert "no redundancy plot" in capsys.readouterr().out


def test_jaccard():
    assert jaccard({(0, 1), (1, 1)}, {(0, 1)}) == 0.5
    assert jaccard(set(), set()) == 1.0


def test_responsiveness_plot_of_a_swin_adapter_with_padded_layers(tmp_path):
    model = tiny_swin()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, mode="percent", percent=0.5))
    randomize_adapters(model)
    hl.deactivate_heads(model, torch.tensor([[1.0, 2.0, float("nan"), float("nan")], [4, 3, 2, 1]]))
    hl.save_adapter(model, tmp_path / "swin")
    report = adapter_head_report(tmp_path / "swin")
    assert report.scores[0][2:] == [None, None] and report.deactivated == [(0, 0), (1, 2), (1, 3)]
    path = plot_responsiveness(report, tmp_path / "r.png")
    assert _png_size(path) == _pixels(responsiveness_figsize(2, 4))


def test_heads_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["heads", "--adapter", str(tmp_path / "missing"), "--output-dir", out]) == 2
    err = capsys.readouterr().err
    assert "no heartlora adapter here" in err and err.count("\n") == 1
    assert main(["heads", "--output-dir", out]) == 2
    assert "heads needs --adapter DIR" in capsys.readouterr().err
    directory, _, _ = make_registered_adapter(tmp_path)
    assert main(["heads", "--adapter", str(directory), "--output-dir", out, "--scorer", "x"]) == 2
    assert "unknown scorer 'x'" in capsys.readouterr().err
