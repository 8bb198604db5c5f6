"""`heartlora export`: an adapter as a peft LoRA adapter or as a merged timm checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.adapter_io import adapter_directory, load_adapter, read_adapter_metadata
from heartlora.commands.arguments import add_base_override_arguments, output_dir
from heartlora.data.transforms import timm_data_config
from heartlora.documents import read_json
from heartlora.errors import HeartLoRAError
from heartlora.tools.export import (
    EXPORT_FORMATS,
    MERGED_INFO_NAME,
    export_merged,
    export_peft,
    refuse_existing_export,
)
from heartlora.tools.serving import adapter_img_size, base_model_from_adapter, base_model_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `heartlora export`."""
    parser.add_argument(
        "--adapter",
        required=True,
        type=Path,
        metavar="DIR",
        help="adapter directory, or the run folder holding it in adapter/",
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
    info = read_json(args.output_dir / MERGED_INFO_NAME, "the timm_model.json just written")
    print(f"wrote merged timm checkpoint {path}")
    print(f"load it with: {info['load']}")
    print(
        "preprocess as trained with: "
        "timm.data.create_transform(**timm.data.resolve_data_config(model=model))"
    )
    return 0
