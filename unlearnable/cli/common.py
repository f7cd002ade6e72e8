"""What every subcommand shares: the run flags, checkpointing flags, building a config by the one precedence
rule (defaults < --config file < explicit flags), loading options, and printing a table."""

from __future__ import annotations

import argparse
from typing import Any, Sequence, TypeVar

from ..config import build_config, given_flags

T = TypeVar("T")


def add_run_flags(p: argparse.ArgumentParser, *, out_help: str = "output folder", out_required: bool = True,
                  config_help: str | None = None, overwrite_help: str = "replace an existing --out") -> None:
    p.add_argument("--out", required=out_required, default=None, help=out_help)
    if config_help:
        p.add_argument("--config", default=None, help=f"YAML/TOML/JSON file with {config_help} fields (explicit "
                                                      "flags override it)")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder/hub")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.pt) weights")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_checkpointing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=_non_negative_int, default=0, metavar="N",
                   help="save a checkpoint every N optimizer steps into OUT.partial/; running the same command "
                        "again resumes from it (removed on success; default 0 = off)")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (off) or a positive number of steps")
    return value


def build(cls: type[T], args: argparse.Namespace, preset: T | None = None) -> T:
    """``preset`` (or the defaults) < ``--config`` < the flags given."""
    return build_config(cls, preset=preset, file=getattr(args, "config", None), overrides=given_flags(args, cls))


def load_options(args):
    from ..experiments import LoadOptions

    return LoadOptions(trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)


def folders(text: str | None) -> list[str]:
    """A ``DIR[,DIR]`` flag's folders (none when the flag is not given)."""
    return [d.strip() for d in (text or "").split(",") if d.strip()]


def print_table(rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def print_summary(summary: dict) -> None:
    """One line per number; a rate's ``<key>_interval_95`` is printed on its line, in brackets."""
    rows = []
    for key, value in summary.items():
        if key.endswith("_interval_95"):
            continue
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        interval = summary.get(f"{key}_interval_95")
        if interval:
            text += f"  [{interval[0]:.3f}, {interval[1]:.3f}] (95 %)"
        rows.append((key, text))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {t}" for k, t in rows))
