"""Argument types and option groups shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.io.atomic import folder_path_problem
from heartlora.models.backbone import MAX_IMG_SIZE


def output_dir(text: str) -> Path:
    """An ``--output-dir`` value: a folder path, never empty (``Path("")`` would silently mean
    the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a folder path, got {text!r} (use . for the working directory)"
        )
    path = Path(text)
    problem = folder_path_problem(path)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem} (expected a folder path)")
    return path


MAX_COUNT = 2**31 - 1
"""The largest value a count or size option takes (argparse's ``int`` has no bound)."""


def positive_int(text: str) -> int:
    """A count or size option: an integer in 1..`MAX_COUNT` (``0`` is refused, never read as
    "not given")."""
    return _bounded_int(text, 1)


def image_side(text: str) -> int:
    """An ``--img-size`` option: an integer in 1..`heartlora.models.backbone.MAX_IMG_SIZE`."""
    return _bounded_int(text, 1, MAX_IMG_SIZE)


def non_negative_int(text: str) -> int:
    """A count or seed option that may be 0: an integer in 0..`MAX_COUNT`."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, lowest: int, highest: int = MAX_COUNT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not lowest <= value <= highest:
        raise argparse.ArgumentTypeError(f"expected an integer in {lowest}..{highest}, got {text}")
    return value


def add_base_override_arguments(
    parser: argparse.ArgumentParser, action: str, plural: bool = False
) -> None:
    """``--model``, ``--checkpoint`` and ``--ignore-base-mismatch``: the base weights a command
    may use instead of those its adapter (``plural``: adapters) names; ``action`` is what the
    command does with them in the help text (``"merge into"``, ``"load"``)."""
    owner, whose, its = (
        ("adapters'", "the adapters were", "their")
        if plural
        else (
            "adapter's",
            "the adapter was",
            "its",
        )
    )
    parser.add_argument("--model", default=None, help=f"timm model name (overrides the {owner})")
    parser.add_argument(
        "--checkpoint", default=None, help=f"base weights file (overrides the {owner})"
    )
    parser.add_argument(
        "--ignore-base-mismatch",
        action="store_true",
        help=f"{action} --checkpoint/--model even though {whose} trained on other base "
        f"weights ({its} metadata's `weights`)",
    )


def add_grid_arguments(
    parser: argparse.ArgumentParser,
    methods_help: str,
    seeds: int | None,
    output: str,
    seeds_help: str = "the protocol's: 1 mini, 3 real",
) -> None:
    """The options of the commands that train a grid of runs (`suite`, `frontier`): which
    protocol (``--base``), which methods (``methods_help`` says the command's default, which
    depends on the protocol), epochs, seeds (default ``seeds``; None: decided later, as
    ``seeds_help`` says), where (default ``output``),
    how many at once, and the config overrides of every run."""
    from heartlora.training.protocols import DEFAULT_PROTOCOL, PROTOCOLS

    parser.add_argument(
        "--base",
        choices=tuple(PROTOCOLS),
        default=DEFAULT_PROTOCOL,
        help="the protocol: "
        + "; ".join(f"{name}: {protocol.summary}" for name, protocol in PROTOCOLS.items())
        + f" (default {DEFAULT_PROTOCOL}; `make demo` runs real)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods; NAME[key=value,...] adds overrides ({methods_help})",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        help="epochs per run (default: the protocol's, 8 mini, 5 real)",
    )
    parser.add_argument(
        "--seeds",
        default=None if seeds is None else str(seeds),
        help="a count (3 → seeds 0,1,2) or a list (0,7) (default "
        + (seeds_help if seeds is None else str(seeds))
        + ")",
    )
    parser.add_argument(
        "--output-dir", default=output, type=output_dir, help="where runs and reports go"
    )
    add_executor_arguments(parser, jobs_default=2)
    add_config_arguments(
        parser,
        "YAML file overriding the protocol's defaults",
        "override one config key for every run",
    )


def listed(text: str | None, default: tuple[str, ...], option: str) -> list[str]:
    """The comma-separated items of an option (``--methods``, ``--tasks``), ``default`` when
    the option was not given.

    Raises:
        HeartLoRAError: the option was given but names nothing (``--methods ""``).
    """
    from heartlora.errors import HeartLoRAError
    from heartlora.training.method_specs import split_top_level

    if text is None:
        return list(default)
    items = [item for item in split_top_level(text) if item.strip()]
    if not items:
        raise HeartLoRAError(
            f"{option} {text!r} names nothing: expected comma-separated names (leave the option "
            "out for the protocol's default)"
        )
    repeated = next((item for index, item in enumerate(items) if item in items[:index]), None)
    if repeated is not None:
        raise HeartLoRAError(f"{option} names {repeated!r} twice (each name is one set of runs)")
    return items


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    """``--config FILE`` and the repeatable ``--set KEY=VALUE`` of the commands that train."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def add_executor_arguments(parser: argparse.ArgumentParser, jobs_default: int = 1) -> None:
    """Where the runs of a multi-run command train: ``--executor local`` (``--jobs``,
    ``--devices``) or ``--executor slurm`` and the SLURM settings, one flag per field of
    `heartlora.training.slurm_executor.SlurmSettings` (also a YAML block, ``--slurm-config``)."""
    import dataclasses

    from heartlora.training.slurm_executor import SlurmSettings

    parser.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: on this machine (default); slurm: each run one SLURM array task, through "
        "submitit",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=jobs_default,
        help="local: runs trained at once, one process and `threads` torch threads each "
        f"(default {jobs_default}); with several GPUs each worker gets its own",
    )
    parser.add_argument(
        "--devices",
        help="local: comma-separated GPU indices for the workers (0,1,...); naming fewer than "
        "--jobs shares them on purpose",
    )
    slurm = parser.add_argument_group("SLURM (--executor slurm)")
    slurm.add_argument(
        "--slurm-config",
        metavar="FILE",
        help="a YAML file of SLURM settings (the keys below, in a mapping or under `slurm:`); "
        "flags override it",
    )
    slurm.add_argument(
        "--no-wait",
        action="store_true",
        help="submit and return; run the same command again to collect the results",
    )
    for spec in dataclasses.fields(SlurmSettings):
        flag = "--" + spec.name.replace("_", "-")
        if spec.name == "sbatch":
            slurm.add_argument(
                flag, action="append", metavar="KEY=VALUE", help=spec.metadata["help"]
            )
            continue
        text = str(spec.type)
        slurm.add_argument(
            flag,
            dest=f"slurm_{spec.name}",
            type={"str | None": str, "float": float}.get(text, non_negative_int),
            metavar="NAME" if text.startswith("str") else "N",
            help=spec.metadata["help"]
            + ("" if spec.default is None else f" (default: {spec.default})"),
        )


def build_executor(args: argparse.Namespace, output_dir: Path, log=print):
    """The executor the parsed options of `add_executor_arguments` ask for.

    Raises:
        HeartLoRAError: bad SLURM settings, or local options given with ``--executor slurm``
            (and the other way round).
    """
    import dataclasses

    from heartlora.errors import HeartLoRAError
    from heartlora.training.local_executor import LocalExecutor
    from heartlora.training.slurm_executor import SlurmExecutor, SlurmSettings, slurm_settings

    names = [spec.name for spec in dataclasses.fields(SlurmSettings) if spec.name != "sbatch"]
    values = {name: getattr(args, f"slurm_{name}") for name in names}
    values["sbatch"] = _sbatch_options(args.sbatch)
    slurm_given = (
        [n for n, v in values.items() if v is not None]
        + (["slurm-config"] if args.slurm_config else [])
        + (["no-wait"] if args.no_wait else [])
    )
    if args.executor == "local":
        if slurm_given:
            flag = slurm_given[0].replace("_", "-")
            raise HeartLoRAError(f"--{flag} is a SLURM setting: add --executor slurm")
        devices = listed(args.devices, (), "--devices") if args.devices else None
        return LocalExecutor(args.jobs, devices, log=log)
    if args.devices:
        raise HeartLoRAError(
            "--devices places local workers: under --executor slurm ask for GPUs with "
            "--gpus-per-run"
        )
    settings = slurm_settings(values, args.slurm_config)
    return SlurmExecutor(settings, Path(output_dir) / "slurm", wait=not args.no_wait, log=log)


def _sbatch_options(items: list[str] | None) -> dict | None:
    from heartlora.errors import HeartLoRAError
    from heartlora.io.documents import parse_yaml

    if not items:
        return None
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise HeartLoRAError(f"--sbatch {item!r}: expected KEY=VALUE (constraint=a100)")
        options[key.strip()] = parse_yaml(text, f"--sbatch {key.strip()}", "a value")
    return options
