"""The one exception type a user can cause: it carries a single sentence for the CLI to print.

A sentence that names a setting writes it with `arg(...)`, so it reads right for whoever
called: `resume=True` from the Python API, `--resume` from the command line.
"""

from __future__ import annotations

import re

_ARG = re.compile(r"\[\[(\w+)(?:=(.*?))?\]\]")
# settings whose command-line flag is not their field name with dashes
FLAG_NAMES = {"vocab_size_bpe": "vocab-size", "max_vocab": "vocab-size"}


def arg(name: str, value: object = None) -> str:
    """A setting named in an error: `name` or `name=value` (API), `--name [value]` (CLI)."""
    return f"[[{name}]]" if value is None else f"[[{name}={value}]]"


def flag(name: str) -> str:
    """The command-line flag of a setting (`init_from` -> `--init-from`)."""
    return "--" + FLAG_NAMES.get(name, name.replace("_", "-"))


def _api(m: re.Match) -> str:
    return m.group(1) if m.group(2) is None else f"{m.group(1)}={m.group(2)}"


def _cli(m: re.Match) -> str:
    value = m.group(2)
    if value is None or value == "True":
        return flag(m.group(1))
    return f"{flag(m.group(1))} {value.strip(chr(39))}"


class MiniGPTError(Exception):
    """A mistake in the user's input: what was wrong and how to fix it, in one sentence."""

    def __str__(self) -> str:
        return _ARG.sub(_api, super().__str__())

    def for_cli(self) -> str:
        """The sentence with settings written as command-line flags."""
        return _ARG.sub(_cli, super().__str__())


class ConfigError(MiniGPTError):
    """An invalid configuration value, file or preset."""


class DataError(MiniGPTError):
    """A data path, corpus or tokenizer problem."""


class CheckpointError(MiniGPTError):
    """A checkpoint directory that is missing, incomplete, corrupt or inconsistent."""
