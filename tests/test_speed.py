import json
import math

import pytest

from heartlora.cli import main
from heartlora.errors import HeartLoRAError
from heartlora.tools.speed import (
    INFERENCE_VARIANTS,
    RATIO_LIMITS,
    TRAIN_VARIANTS,
    SpeedConfig,
    format_report,
    read_speed_goals,
    run_speed_benchmark,
)

TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_result():
    config = SpeedConfig(
        img_size=32,
        batch_size=2,
        steps=2,
        warmup=1,
        calib_batches=2,
        calib_rounds=1,
        threads=1,
        model_kwargs=TINY_VIT,
    )
    return run_speed_benchmark(config)


def test_every_variant_has_raw_times_median_and_memory(tiny_result):
    assert set(tiny_result["train"]) == set(TRAIN_VARIANTS)
    for name, row in tiny_result["train"].items():
        assert len(row["times_ms"]) == len(row["cpu_times_ms"]) == 2, name
        assert all(_positive(t) for t in row["times_ms"]), name
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"], name
        memory = row["memory"]
        assert _positive(memory["peak_bytes"]) and _positive(memory["saved_activation_bytes"])
        # the peak includes at least the weights, the optimizer state and the gradients
        assert memory["peak_bytes"] >= memory["parameter_bytes"] + memory["optimizer_state_bytes"]
        assert memory["peak_bytes"] >= memory["parameter_bytes"] + memory["gradient_bytes"]
    assert set(tiny_result["inference"]) == set(INFERENCE_VARIANTS)
    assert all(_positive(row["median_ms"]) for row in tiny_result["inference"].values())


def test_variants_train_what_they_should(tiny_result):
    trainable = {name: row["trainable_parameters"] for name, row in tiny_result["train"].items()}
    # bound: classifier only; peft and heartlora: same adapter size on q,v / qkv; Heart-LoRA
    # drops half the heads' B blocks; full trains everything
    assert trainable["bound"] < trainable["heart_lora"] < trainable["lora_all_heads"]
    assert trainable["lora_all_heads"] == trainable["peft_lora"]
    assert trainable["full"] > trainable["lora_all_heads"]
    memory = {name: row["memory"] for name, row in tiny_result["train"].items()}
    # AdamW keeps two moments per parameter (plus a step count)
    assert memory["full"]["optimizer_state_bytes"] >= 2 * memory["full"]["parameter_bytes"]


def test_ratios_calibration_and_adapter_bytes(tiny_result):
    ratios = tiny_result["ratios"]
    for key in (
        "heart_lora_vs_bound",
        "heart_lora_vs_peft_lora",
        "merged_vs_base",
        "calibration_vs_epoch",
        "calibration_vs_run",
        "heart_lora_memory_vs_peft_lora",
        "heart_lora_memory_vs_bound",
        "heart_lora_adapter_bytes_vs_peft_lora",
    ):
        assert _positive(ratios[key]), key
    assert set(RATIO_LIMITS) <= set(ratios)
    assert set(tiny_result["targets"]) == set(RATIO_LIMITS)
    for target in tiny_result["targets"].values():
        assert isinstance(target["met"], bool)
    assert all(_positive(v) for v in tiny_result["cpu_ratios"].values())
    calibration = tiny_result["calibration"]
    assert calibration["steps_per_epoch"] == 500  # 1000 images at batch 2
    assert calibration["epoch_ms"] == pytest.approx(
        500 * tiny_result["train"]["heart_lora"]["median_ms"]
    )
    # scoring happens once per run: 100 epochs by default
    assert calibration["run_ms"] == pytest.approx(100 * calibration["epoch_ms"])
    assert tiny_result["ratios"]["calibration_vs_run"] == pytest.approx(
        tiny_result["ratios"]["calibration_vs_epoch"] / 100
    )
    sizes = tiny_result["adapter_bytes"]
    # deactivated heads are not stored
    assert sizes["heart_lora"]["weights_bytes"] < sizes["lora_all_heads"]["weights_bytes"]
    assert all(_positive(s["total_bytes"]) for s in sizes.values())
    json.dumps(tiny_result)  # JSON-ready
    report = format_report(tiny_result)
    assert "heart_lora_vs_bound" in report and "frozen-backbone bound" in report


def test_every_ratio_is_reported_once_in_wall_time_and_the_timed_ones_in_cpu_time(tiny_result):
    ratios = tiny_result["ratios"]
    assert len(ratios) == 16
    assert ratios["lora_all_heads_adapter_bytes_vs_peft_lora"] == pytest.approx(
        tiny_result["adapter_bytes"]["lora_all_heads"]["total_bytes"]
        / tiny_result["adapter_bytes"]["peft_lora"]["total_bytes"]
    )
    train = tiny_result["train"]
    assert ratios["full_vs_bound"] == train["full"]["median_ms"] / train["bound"]["median_ms"]
    cpu = tiny_result["cpu_ratios"]
    assert cpu["full_vs_bound"] == train["full"]["cpu_median_ms"] / train["bound"]["cpu_median_ms"]
    assert set(cpu) == {name for name in ratios if "_memory_" not in name and "_bytes_" not in name}
    assert set(tiny_result["paired_ratios"]) == {
        "heart_lora_vs_bound",
        "heart_lora_vs_peft_lora",
        "lora_all_heads_vs_bound",
        "lora_all_heads_vs_peft_lora",
        "merged_vs_base",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("heart_lora_vs_bond: 1.1\n", "'heart_lora_vs_bond' is not a ratio of the report "
         "(did you mean 'heart_lora_vs_bound'?)"),
        ("merged_vs_base: 0\n", "merged_vs_base: expected a positive number, got 0"),
        ("merged_vs_base: yes\n", "merged_vs_base: expected a positive number, got True"),
        ("- 1.0\n", "expected a mapping of ratio names to limits, got list"),
    ],
)  # fmt: skip
def test_a_goals_file_is_checked_by_key(tmp_path, text, message):
    path = tmp_path / "goals.yaml"
    path.write_text(text)
    with pytest.raises(HeartLoRAError) as error:
        read_speed_goals(path)
    assert str(error.value) == f"{path}: {message}"


def test_the_cli_refuses_a_bad_goals_file_before_timing_anything(tmp_path, capsys):
    path = tmp_path / "goals.yaml"
    path.write_text("full_vs_bond: 2\n")
    assert main(["speed", "--goals", str(path), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "full_vs_bond" in err[0] and "full_vs_bound" in err[0]


def test_invalid_settings_are_named():
    with pytest.raises(HeartLoRAError, match="batch_size"):
        SpeedConfig(batch_size=0)
    with pytest.raises(HeartLoRAError, match="dtype"):
        SpeedConfig(dtype="fp16")


@pytest.mark.slow
def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "speed.json"
    goals = tmp_path / "goals.yaml"
    goals.write_text("merged_vs_base: 5\nfull_vs_bound: 100\n")
    code = main(
        [
            "speed",
            "--model",
            "vit_tiny_patch16_224",
            "--img-size",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--calib-batches",
            "1",
            "--threads",
            "1",
            "--quiet",
            "--json",
            str(path),
            "--goals",
            str(goals),
        ]
    )
    assert code == 0
    result = json.loads(path.read_text())
    assert result["targets"]["merged_vs_base"]["limit"] == 5.0  # from --goals
    assert result["config"]["model"] == "vit_tiny_patch16_224"
    assert set(result["train"]) == set(TRAIN_VARIANTS)
    assert "heart_lora_vs_peft_lora" in result["ratios"]
    assert "heart_lora_vs_bound" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_variants_are_timed_beside_eager_ones():
    config = SpeedConfig(
        img_size=32,
        batch_size=2,
        steps=2,
        warmup=1,
        calib_batches=1,
        calib_rounds=1,
        threads=1,
        model_kwargs=TINY_VIT,
        compile=True,
        compile_backend="aot_eager",  # dynamo's graph capture without inductor's codegen
    )
    result = run_speed_benchmark(config)
    for name in TRAIN_VARIANTS:
        row = result["train"][f"compiled_{name}"]
        assert row["compiled"] and len(row["times_ms"]) == 2
        assert _positive(row["compile_seconds"])
        assert row["trainable_parameters"] == result["train"][name]["trainable_parameters"]
    for key in ("compiled_heart_lora_vs_compiled_bound", "compiled_heart_lora_vs_heart_lora"):
        assert _positive(result["ratios"][key]) and _positive(result["paired_ratios"][key])
    assert "compiled" in format_report(result)
