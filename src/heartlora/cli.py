"""The `heartlora` command line: a thin layer over the library.

Each sub-command lives in its own module under `heartlora.commands` and exposes
`add_arguments(parser)` and `run(args) -> int`. User errors (bad arguments, `HeartLoRAError`,
`ValueError`, `OSError` such as a missing file or a full disk, `MemoryError`) become one line on
stderr, ``heartlora: error: ...``, and exit code 2; any other exception is a bug or a case nobody
foresaw: one line naming it and a file holding its traceback, exit code 1. `--debug` shows the
traceback instead. Ctrl-C exits with
130 (SIGTERM, which a training run also handles, with 143); a closed stdout (``| head -1``)
ends a command quietly with 141 (`heartlora.commands.console`).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import NoReturn

from heartlora import __version__
from heartlora.commands.console import STDOUT_CLOSED_EXIT, drop_stdout, stdout_closed
from heartlora.errors import HeartLoRAError, one_line

# (command name, module under heartlora.commands, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("train", "train", "fine-tune a timm ViT with one method on one task"),
    ("suite", "suite", "run methods × tasks on mini-VTAB and print the paper-style table"),
    (
        "frontier",
        "frontier",
        "accuracy vs stored bytes of LoRA, peft LoRA, Heart-LoRA and controls, chosen on val200",
    ),
    ("pretrain", "pretrain", "pretrain the bundled base ViT on Fashion-MNIST"),
    ("heads", "heads", "plot head responsiveness and redundancy of an adapter"),
    ("export", "export", "export an adapter as a peft LoRA adapter or a merged timm checkpoint"),
    ("predict", "predict", "classify images with one or more task adapters on one shared backbone"),
    (
        "speed",
        "speed",
        "benchmark training/inference speed and memory against peft LoRA and the frozen-backbone bound",
    ),
)


class _UsageError(Exception):
    """A usage error while `OneLineParser.probing`: nothing is printed."""


class OneLineParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors are one line, like every other error:
    ``heartlora: error: argument --epochs: invalid int value: 'x' (see heartlora train --help)``.

    An unknown option is reported as such: argparse checks required options first, so
    ``heartlora train --epochs 2 --bogus 3`` said only that ``--output-dir`` was missing.
    """

    probing = False
    """True while `parse_args` looks for unknown options (errors raise `_UsageError`)."""

    def error(self, message: str) -> NoReturn:
        if OneLineParser.probing:
            raise _UsageError(message)
        text = " ".join(message.splitlines())
        self.exit(2, f"heartlora: error: {text} (see {self.prog} --help)\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if OneLineParser.probing:  # --help, --version: shown by the real parse
            raise _UsageError(message or "")
        super().exit(status, message)

    def _print_message(self, message: str, file=None) -> None:
        if not OneLineParser.probing:
            super()._print_message(message, file)

    def parse_args(self, args=None, namespace=None):  # noqa: D102 (argparse's own)
        unknown, command = self._unknown_options(args)
        if unknown:
            parser = _all_parsers(self).get(command, self)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_args(args, namespace)

    def _unknown_options(self, args) -> tuple[list[str], str | None]:
        """The arguments no parser knows and the sub-command given, found with every option
        made optional; none when another usage error comes first (`parse_args` then reports
        that one)."""
        parsers = _all_parsers(self).values()
        relaxed = [a for p in parsers for a in p._actions if a.required and a.option_strings]
        for action in relaxed:
            action.required = False
        OneLineParser.probing = True
        try:
            known, unknown = self.parse_known_args(args)
        except _UsageError:
            return [], None
        finally:
            OneLineParser.probing = False
            for action in relaxed:
                action.required = True
        return unknown, getattr(known, "command", None)


def _all_parsers(parser: argparse.ArgumentParser) -> dict[str | None, argparse.ArgumentParser]:
    """``parser`` (key ``None``) and its sub-command parsers by command name."""
    found: dict[str | None, argparse.ArgumentParser] = {None: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = OneLineParser(
        prog="heartlora",
        description="Head-level low-rank adaptation (Heart-LoRA) for timm Vision Transformers.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"heartlora {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(f"heartlora.commands.{module_name}")
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM for a training run
        signum = getattr(stop, "signum", 2)
        print("heartlora: interrupted", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError as error:
        if not stdout_closed():
            if args.debug:
                raise
            print(f"heartlora: error: {one_line(error)}", file=sys.stderr)
            return 2
        drop_stdout()
        return STDOUT_CLOSED_EXIT
    except (HeartLoRAError, ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"heartlora: error: {one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        if not _out_of_memory(error):  # a bug, or a case nobody foresaw: one line, trace kept
            saved = save_traceback(error, args.command)
            print(
                f"heartlora: internal error: {type(error).__name__}: {one_line(error)} (not a "
                f"problem with your input that heartlora knows; traceback saved in {saved}, "
                "please report it)",
                file=sys.stderr,
            )
            return UNEXPECTED_ERROR_EXIT
        print(
            "heartlora: error: out of memory (expected settings that fit this machine: lower "
            "batch_size, img_size or rank)",
            file=sys.stderr,
        )
        return 2


def run_program() -> NoReturn:
    """The ``heartlora`` program (and ``python -m heartlora``): `main`, then exit with its code.

    Before the interpreter exits, every object alive is frozen out of the garbage collector
    (`gc.freeze`): its last collection would otherwise walk the 380,000 objects that importing
    torch and timm creates, only to free memory that the exit frees anyway, about 0.6 s of
    every command on a 2-core machine (docs/performance.md). Files are closed and atexit
    handlers run as before; `main` itself, which tests and scripts call in their own process,
    leaves the collector alone.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


UNEXPECTED_ERROR_EXIT = 1
"""The exit code of an unexpected exception (expected failures exit with 2)."""


def _out_of_memory(error: BaseException) -> bool:
    """Host memory (`MemoryError`, or torch's CPU allocator failing with a `RuntimeError`) or
    accelerator memory (`torch.OutOfMemoryError`) ran out."""
    torch = sys.modules.get("torch")
    if isinstance(error, MemoryError) or (
        torch is not None and isinstance(error, torch.OutOfMemoryError)
    ):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def save_traceback(error: BaseException, command: str | None) -> str:
    """Write ``error``'s traceback to a new file in the temporary folder; returns its path (or a
    note saying why it could not be written)."""
    text = "".join(traceback.format_exception(error))
    try:
        handle, path = tempfile.mkstemp(prefix=f"heartlora-{command or 'cli'}-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(f"heartlora {' '.join(sys.argv[1:])}\n{text}")
    except OSError as problem:
        return f"nowhere ({problem.strerror}; rerun with --debug to see it)"
    return path
