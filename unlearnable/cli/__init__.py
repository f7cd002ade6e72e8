"""The ``unlearnable`` command: a thin layer over the Python API, one module per subcommand.

Each subcommand module has ``add_arguments(parser)`` (flags generated from its config dataclass, plus the short
aliases earlier versions named) and ``run(args)`` (build the config, call one API function, print). Only the
chosen subcommand's module is imported, so ``unlearnable --help`` stays fast.

Errors the user can fix print one line (``unlearnable: error: ...``) and exit with status 2 (set
``UNLEARNABLE_DEBUG=1`` for a traceback). Ctrl-C exits with 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("demo", "the end-to-end demo on the embedded model"),
    "vectors": ("vectors", "security vectors (train)"),
    "finetune": ("finetune", "fine-tune a model, with or without security vectors"),
    "evaluate": ("evaluate", "harm rate, harmful loss and task exact match of a model"),
    "immunize": ("immunize", "four immunization conditions for defences under attack budgets"),
    "tradeoff": ("tradeoff", "harm rate vs task score over vector strengths, variants and seeds"),
    "ls": ("ls", "list registered defences and judges"),
}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other error of the command is."""

    def error(self, message: str):
        self.exit(2, f"unlearnable: error: {message} (see `{self.prog} --help`)\n")


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own flags are built (importing its module)."""
    from importlib.metadata import version

    parser = Parser(prog="unlearnable", description="Fine-tune LLMs without learning harmful data "
                                     "(security vectors) and measure defences under attack.")
    parser.add_argument("--version", action="version", version=f"unlearnable {version('unlearnable')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            importlib.import_module(f"{__name__}.{module}").add_arguments(p)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    from .. import interrupts
    from ..errors import UnlearnableError, write_error

    interrupts.install()  # before anything slow, so that Ctrl-C and SIGTERM are ours from the start
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser(_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    debug = os.environ.get("UNLEARNABLE_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except UnlearnableError as exc:
        if debug:
            raise
        print(f"unlearnable: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, permission denied, ...: the environment, not a bug
        if debug:
            raise
        known = write_error(exc, getattr(args, "out", None) or "the output")
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"unlearnable: error: {known or (exc.strerror or exc)}{'' if known else where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or interrupts.Interrupted (SIGINT / SIGTERM)
        print(f"\nunlearnable: {_interrupted_message(args, exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


def _interrupted_message(args, exc: BaseException) -> str:
    from ..runs import latest_checkpoint, partial_dir

    what = "terminated (SIGTERM)" if getattr(exc, "exit_code", 130) == 143 else "interrupted"
    if getattr(args, "command", None) in ("immunize", "tradeoff"):
        return (f"{what}; the finished runs are kept in {args.out or args.command + '-out'}: run the same command "
                "again to resume from there")
    checkpoints = partial_dir(args.out) if getattr(args, "checkpoint_every", None) is not None and args.out else None
    ckpt = latest_checkpoint(checkpoints)
    if ckpt is not None:
        return (f"{what}; training is saved up to {ckpt.name} in {checkpoints}: run the same command again to "
                "resume from there")
    hint = " (add --checkpoint-every N to be able to resume)" if hasattr(args, "checkpoint_every") else ""
    return (f"{what} before any checkpoint; nothing half-written was kept. Run the same command again to start "
            f"over{hint}")


__all__ = ["COMMANDS", "main", "make_parser"]
