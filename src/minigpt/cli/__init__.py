"""The `minigpt` command: parses arguments and calls the rooms; no logic of its own.

Each sub-command lives in its own module with `register(subparsers)`; its handler returns an
exit code. Every user mistake (MiniGPTError) is printed as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import MiniGPTError

# sub-command modules, in the order `minigpt --help` lists them
COMMANDS = ["train", "sample", "compare", "viz", "serve", "bench", "export", "import_"]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one sentence and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    from ..version import __version__

    p = Parser(prog="minigpt", description="Train small GPTs and compare positional encodings.")
    p.add_argument("--version", action="version", version=f"minigpt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(__name__):
                continue  # a sub-command not built yet
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    # library noise a user cannot act on (transformers' advice to its own API users during
    # bench --vs hf and export); a user's own TRANSFORMERS_VERBOSITY wins
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for "run it again" hints
    try:
        code = args.handler(args)
    except MiniGPTError as e:
        print(f"minigpt {args.command}: error: {_rank()}{e.for_cli()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minigpt {args.command}: interrupted.", file=sys.stderr)
        return 130
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"minigpt {args.command}: error: {e.strerror or e}{where}.", file=sys.stderr)
        return 2
    return int(code or 0)


def _rank() -> str:
    """'rank N: ' inside a multi-process (torchrun) job, so a failure names its process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ""  # alone: say nothing, and do not load torch just to find that out
    from ..runtime import process_rank

    return f"rank {process_rank()}: "


def run() -> None:
    sys.exit(main())
