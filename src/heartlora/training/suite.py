"""`heartlora suite`: methods × tasks × seeds on the mini-VTAB default (or any VTAB-layout data).

Every run lives in ``<output>/runs/<task>/<method>/seed<k>/``; a finished run with the same
config is reused and an interrupted one resumed, so a killed suite continues where it stopped.
The suite writes ``results.csv`` (one row per run), ``results.md`` (the paper-style table) and
``accuracy_vs_storage.png``.

A method may carry config overrides in brackets, which is how ablations run:
``heart-lora-layer[ne=2]``, ``heart-lora[scorer=grad-norm,ne=3]``.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from heartlora.atomic import atomic_write, atomic_write_text
from heartlora.bundled.tasks import (
    MINI_DEFAULTS,
    MINI_METHOD_DEFAULTS,
    MINI_VTAB_TASKS,
    materialize,
)
from heartlora.errors import HeartLoRAError
from heartlora.training.config import TrainConfig, build_config, parse_override, read_config_file
from heartlora.training.report import RunResult, markdown_table, results_csv, summarize

DEFAULT_METHODS = ("linear", "full", "lora", "heart-lora", "heart-lora-layer", "peft-lora")

_METHOD_PATTERN = re.compile(r"^([a-z-]+)(?:\[(.*)\])?$")


@dataclass(frozen=True)
class SuiteTask:
    """A task of the suite: its name, VTAB group and the config keys it sets."""

    name: str
    group: str
    settings: dict[str, Any]


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: ``"a,b[x=1,y=[2,3]]"`` → ``["a", "b[x=1,y=[2,3]]"]``."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current.strip())
    return items


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``"heart-lora[ne=2,scorer=grad-norm]"`` → ``("heart-lora", {"ne": 2, "scorer": ...})``;
    a list value keeps its commas: ``"lora[targets=[q,k,v]]"``."""
    match = _METHOD_PATTERN.match(text.strip())
    if not match:
        raise HeartLoRAError(f"method {text!r}: expected NAME or NAME[key=value,...]")
    overrides: dict[str, Any] = {}
    for item in filter(None, split_top_level(match.group(2) or "")):
        key, sep, value = item.partition("=")
        if not sep:
            raise HeartLoRAError(f"method {text!r}: expected key=value inside the brackets")
        overrides[key.strip()] = yaml.safe_load(value)
    return match.group(1), overrides


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2; ``"0,7"`` → seeds 0 and 7."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        count = int(text)
    except ValueError:
        raise HeartLoRAError(f"--seeds {text!r}: expected a count (3) or a list (0,7)") from None
    if count <= 0:
        raise HeartLoRAError(f"--seeds {text!r}: expected at least one seed")
    return list(range(count))


def mini_vtab_tasks(names: list[str] | None, data_root: Path) -> list[SuiteTask]:
    """The mini-VTAB tasks (all by default), materialised under ``data_root``."""
    names = names or list(MINI_VTAB_TASKS)
    unknown = [n for n in names if n not in MINI_VTAB_TASKS]
    if unknown:
        raise HeartLoRAError(
            f"unknown mini-VTAB task {unknown[0]!r}; `heartlora suite --list` names the tasks"
        )
    materialize(data_root, tasks=names)
    return [
        SuiteTask(name, MINI_VTAB_TASKS[name].group, {"task": name, "data_root": str(data_root)})
        for name in names
    ]


def _run_config(
    base: dict[str, Any],
    task: SuiteTask,
    method: str,
    seed: int,
    method_defaults: dict[str, dict[str, Any]],
) -> TrainConfig:
    name, overrides = parse_method(method)
    data = {
        **base,
        **method_defaults.get(name, {}),
        **task.settings,
        **overrides,
        "method": name,
        "seed": seed,
    }
    return build_config(None, [f"{k}={json.dumps(v)}" for k, v in data.items()])


def _finished(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    result = run_dir / "result.json"
    if not result.is_file() or _saved_config(run_dir) != config.to_dict():
        return None
    return json.loads(result.read_text(encoding="utf-8"))


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    saved = run_dir / "config.yaml"
    return yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else None


def _train_run(settings: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], str]:
    """Finish one run: reuse a finished one, resume an interrupted one, or train from scratch.

    Top-level (and given plain data) so that a worker process can run it.
    """
    from heartlora.training.trainer import run_training

    config = TrainConfig(**settings)
    result = _finished(run_dir, config)
    if result is not None:
        return result, "reused"
    resume = (run_dir / "checkpoint.pt").is_file() and _saved_config(run_dir) == config.to_dict()
    result = run_training(config, run_dir, resume=resume, overwrite=not resume, log=lambda *_: None)
    return result, f"{result['wall_seconds']:.0f}s"


def run_suite(
    tasks: list[SuiteTask],
    methods: list[str],
    seeds: list[int],
    output_dir: Path,
    base: dict[str, Any],
    log: Callable[[str], None] = print,
    method_defaults: dict[str, dict[str, Any]] | None = None,
    jobs: int = 1,
) -> list[RunResult]:
    """Run (or reuse) every method × task × seed and write the result files.

    A run's settings: ``base`` < ``method_defaults[method]`` < the task's < the method's brackets.
    With ``jobs`` > 1 that many runs train at once, each in its own process (give each run
    ``threads`` = cores / jobs); results do not depend on it.
    """
    plan = [
        (task, method, seed, _run_config(base, task, method, seed, method_defaults or {}))
        for task in tasks
        for method in methods
        for seed in seeds
    ]
    finished: dict[int, RunResult] = {}
    started = time.perf_counter()

    def record(index: int, result: dict[str, Any], status: str) -> None:
        task, method, seed, _ = plan[index]
        finished[index] = RunResult(
            method,
            task.name,
            task.group,
            seed,
            result["final_accuracy"],
            result["trainable_parameters"],
            result["adapter_bytes"],
            result["wall_seconds"],
        )
        elapsed = time.perf_counter() - started
        remaining = elapsed / len(finished) * (len(plan) - len(finished))
        log(
            f"[{len(finished)}/{len(plan)}] {task.name:<18} {method:<22} seed {seed}  "
            f"acc {result['final_accuracy']:5.1f}%  ({status}; ~{remaining / 60:.1f} min left)"
        )

    def run_dir(index: int) -> Path:
        task, method, seed, _ = plan[index]
        return output_dir / "runs" / task.name / method / f"seed{seed}"

    if jobs <= 1:
        for index, (*_, config) in enumerate(plan):
            record(index, *_train_run(config.to_dict(), run_dir(index)))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {
                pool.submit(_train_run, config.to_dict(), run_dir(index)): index
                for index, (*_, config) in enumerate(plan)
            }
            try:
                for future in as_completed(futures):
                    record(futures[future], *future.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    results = [finished[index] for index in range(len(plan))]
    write_reports(results, output_dir)
    return results


def write_reports(results: list[RunResult], output_dir: Path) -> None:
    """results.csv, results.md and the accuracy-vs-storage plot."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    atomic_write_text(output_dir / "results.csv", results_csv(results))
    seeds = sorted({r.seed for r in results})
    text = (
        "# Results\n\nTop-1 test accuracy (%) after the last epoch"
        + (f", mean ± std over seeds {seeds}" if len(seeds) > 1 else f", seed {seeds[0]}")
        + ". Params: trainable parameters (classifier included); Stored: bytes the method "
        "saves per task.\n\n" + markdown_table(summary)
    )
    atomic_write_text(output_dir / "results.md", text)
    plot_accuracy_vs_storage(summary, output_dir / "accuracy_vs_storage.png")


def plot_accuracy_vs_storage(summary, path: Path) -> Path:
    """Average accuracy against stored bytes per task, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in summary.methods:
        x = summary.adapter_bytes[method] / 1024
        y = sum(summary.average[method]) / len(summary.average[method])
        axis.scatter([x], [y], s=40, label=f"{method} ({y:.1f}%)", alpha=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("stored per task (KB, log scale)")
    axis.set_ylabel("average accuracy (%)")
    axis.set_title("Accuracy vs stored parameters")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path


def suite_base_config(
    config_file: str | None, overrides: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The mini defaults updated by a config file and ``--set key=value`` items, and the
    per-method defaults that the user did not override."""
    base = dict(MINI_DEFAULTS)
    given = read_config_file(config_file) if config_file else {}
    for item in overrides:
        key, value = parse_override(item)
        given[key] = value
    base.update(given)
    build_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()])  # validate early
    method_defaults = {
        method: {k: v for k, v in values.items() if k not in given}
        for method, values in MINI_METHOD_DEFAULTS.items()
    }
    return base, method_defaults
