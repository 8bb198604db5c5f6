"""`heartlora export`: an adapter as a peft LoRA adapter or as a merged timm checkpoint; the run
of another method as a merged timm checkpoint, or (``peft-*`` runs) as the peft adapter it is."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.adapter_io import adapter_directory, load_adapter, read_adapter_metadata
from heartlora.commands.arguments import add_base_override_arguments, output_dir
from heartlora.data.transforms import timm_data_config
from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write_bytes
from heartlora.io.documents import read_json
from heartlora.tools.export import (
    EXPORT_FORMATS,
    MERGED_INFO_NAME,
    export_merged,
    export_peft,
    refuse_existing_export,
    write_timm_checkpoint,
)
from heartlora.tools.runs import TrainedRun, load_run_model, merged_run_state, other_method_run
from heartlora.tools.serving import adapter_img_size, base_model_from_adapter, base_model_kwargs
from heartlora.training.methods import PEFT_METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `heartlora export`."""
    parser.add_argument(
        "--adapter",
        required=True,
        type=Path,
        metavar="DIR",
        help="adapter directory, or the run folder holding it in adapter/; the run folder of "
        "any other method too (merged: every method; peft: the peft-* methods)",
    )
    parser.add_argument(
        "--format",
        required=True,
        metavar="FORMAT",
        help=f"one of {', '.join(EXPORT_FORMATS)}",
        dest="export_format",
    )
    parser.add_argument("--output-dir", required=True, type=output_dir, help="folder to write")
    add_base_override_arguments(parser, "merge into")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an export already in --output-dir"
    )


def run(args: argparse.Namespace) -> int:
    """Export the adapter; returns the exit code."""
    if args.export_format not in EXPORT_FORMATS:
        raise HeartLoRAError(
            f"unknown export format {args.export_format!r}: expected one of {', '.join(EXPORT_FORMATS)}"
        )
    run = other_method_run(args.adapter)
    if run is not None:
        return _export_run(run, args)
    args.adapter = adapter_directory(args.adapter)
    if not args.overwrite:
        refuse_existing_export(args.output_dir, args.export_format)
    metadata = read_adapter_metadata(args.adapter)
    name = args.model or metadata.run.model or metadata.base_model
    # peft export reads only the adapter tensors: the base weights need not be at hand.
    base = base_model_from_adapter(
        args.adapter,
        args.checkpoint,
        args.model,
        load_weights=args.export_format == "merged",
        ignore_base_mismatch=args.ignore_base_mismatch,
    )
    model = load_adapter(base, args.adapter)
    if args.export_format == "peft":
        out = export_peft(model, args.output_dir)
        print(f"wrote peft LoRA adapter to {out}")
        print(
            f"load it with: peft.PeftModel.from_pretrained(timm.create_model({name!r}, ...), {str(out)!r})"
        )
        return 0
    create_kwargs = base_model_kwargs(metadata)
    path = export_merged(
        model,
        args.output_dir,
        model_name=name,
        create_kwargs=create_kwargs,
        overwrite=True,
        data_config=timm_data_config(adapter_img_size(args.adapter, model), metadata.run.normalize),
    )
    _print_merged(path, args.output_dir)
    return 0


def _print_merged(path: Path, output_dir: Path) -> None:
    info = read_json(output_dir / MERGED_INFO_NAME, "the timm_model.json just written")
    print(f"wrote merged timm checkpoint {path}")
    print(f"load it with: {info['load']}")
    print(
        "preprocess as trained with: "
        "timm.data.create_transform(**timm.data.resolve_data_config(model=model))"
    )


def _export_run(run: TrainedRun, args: argparse.Namespace) -> int:
    """Export the run of a method other than heartlora's adapters: ``merged``, the trained model
    as a plain timm checkpoint (a ``peft-*`` update merged by peft's ``merge_and_unload``);
    ``peft``, a ``peft-*`` run's adapter folder as it is (peft's own files)."""
    method = run.config.method
    if args.export_format == "peft" and method not in PEFT_METHODS:
        raise HeartLoRAError(
            f"{run.adapter}: a `{method}` run stores {run.method.stores}, which no peft adapter "
            "holds (expected a peft-* run for --format peft; --format merged writes this run's "
            "model as a timm checkpoint)"
        )
    if not args.overwrite:
        refuse_existing_export(args.output_dir, args.export_format)
    if args.export_format == "peft":
        for path in sorted(run.adapter.rglob("*")):
            if path.is_file():
                atomic_write_bytes(
                    args.output_dir / path.relative_to(run.adapter), path.read_bytes()
                )
        print(f"wrote the {method} run's peft adapter to {args.output_dir}")
        print(
            f"load it with: peft.PeftModel.from_pretrained(base, {str(args.output_dir)!r}), base "
            f"being the run's base model ({run.config.model}, {run.num_classes} classes, its base "
            f"weights: heartlora.tools.runs.run_base_model(heartlora.tools.runs.read_run("
            f"{str(run.folder)!r})))"
        )
        return 0
    model = load_run_model(run, args.checkpoint, args.model, args.ignore_base_mismatch)
    path = write_timm_checkpoint(
        merged_run_state(model, method),
        args.output_dir,
        args.model or run.config.model,
        run.num_classes,
        run.create_kwargs(),
        timm_data_config(run.config.img_size, run.config.normalize),
    )
    _print_merged(path, args.output_dir)
    return 0
