"""Flags generated from the typed config dataclasses (litgpt-style), so every config field is
a flag with no hand-written list; shared by `train` and `compare`.

Help text, choices and metavars come from the fields' `setting(...)` metadata in config.py,
and the defaults shown are the values of the preset the command starts from.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from ..config import (EXTENSION_SETTINGS, WHICH, ModelConfig, RunConfig, TrainConfig, choices,
                      field_types, file_names, load_toml, merge, preset, preset_value,
                      vocab_field)
from ..errors import ConfigError

# config fields that are not flags: the model's vocabulary comes from the tokenizer, and the
# tokenizer's own vocabulary settings share one flag, --vocab-size
SKIP = {"vocab_size", "vocab_size_bpe", "max_vocab"}
METAVARS = {int: "N", float: "FLOAT", str: "TEXT"}


def _parse_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_flags(p: argparse.ArgumentParser, skip: set[str] = frozenset(),
                     preset_name: str = "small", over: str = "--preset and --config") -> None:
    """One flag per config field; defaults are None so only given flags override. The help
    shows each setting's value in `preset_name`, the preset the command starts from."""
    for cls, section, title in ((ModelConfig, "model", "model"),
                                (TrainConfig, "train", "training")):
        g = p.add_argument_group(f"{title} settings (defaults: the {preset_name} preset; flags "
                                 f"override {over})")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, typ in field_types(cls).items():
            if name in SKIP or name in skip:
                continue
            meta = fields[name].metadata
            default = meta.get("default_text") or show(preset_value(preset_name, section, name))
            add_field_flag(g, cls, name, typ, meta, default, dest=f"cfg_{name}")
            if name == "tokenizer":
                sizes = {t: show(preset_value(preset_name, "train", vocab_field(t)))
                         for t in ("bpe", "word")}
                g.add_argument("--vocab-size", type=int, metavar="N", dest="vocab_size_flag",
                               help=f"bpe: target vocabulary size (default: {sizes['bpe']}); "
                                    f"word: keep at most N words (default: {sizes['word']}); "
                                    "the char tokenizer has none")


def add_field_flag(g: Any, cls: type, name: str, typ: Any, meta: Any, default: str, *,
                   dest: str) -> None:
    """One flag for one typed settings field (its help, choices and metavar from the field's
    `setting(...)` metadata); its default is None, so only a given flag overrides."""
    kw: dict[str, Any] = dict(dest=dest, default=None, help=f"{meta['help']} (default: {default})")
    flag = "--" + name.replace("_", "-")
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # `int | None`: not given
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    allowed = choices(cls, name)
    if typ is bool:
        g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif typing.get_origin(typ) is list:
        g.add_argument(flag, type=_parse_list, metavar=meta["metavar"], **kw)
    elif allowed is not None and meta["metavar"]:
        # listed only when help is shown: the encodings' registry imports torch
        kw["help"] = f"{meta['help']}: %(choices)s (default: {default})"
        g.add_argument(flag, type=str, choices=allowed, metavar=meta["metavar"], **kw)
    elif allowed is not None:
        g.add_argument(flag, type=str, choices=allowed, **kw)
    else:
        g.add_argument(flag, type=typ, metavar=meta["metavar"] or METAVARS[typ], **kw)


def add_settings_flags(p: argparse.ArgumentParser, cls: type, title: str,
                       names: Sequence[str] | None = None) -> None:
    """One flag per field of a settings dataclass (the study's, the sampling settings), or per
    field in `names`, defaults shown from the dataclass; given flags land in
    `args.set_<name>`."""
    g = p.add_argument_group(title)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, typ in field_types(cls).items():
        if names is not None and name not in names:
            continue
        meta = fields[name].metadata
        default = meta.get("default_text") or show(fields[name].default)
        add_field_flag(g, cls, name, typ, meta, default, dest=f"set_{name}")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings-dataclass fields given on the command line (see add_settings_flags)."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("set_") and v is not None}


def add_model_flags(g: Any, names: Sequence[str], default: Callable[[str], str]) -> None:
    """Flags for some ModelConfig settings (their help, choices and metavars from config.py),
    `default(name)` saying what an omitted one means; given ones land in `args.<name>`."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    types_ = field_types(ModelConfig)
    for name in names:
        meta = dict(fields[name].metadata)
        meta["help"] = meta["help"].removeprefix("rope only: ")
        add_field_flag(g, ModelConfig, name, types_[name], meta, default(name), dest=name)


def add_extension_flags(p: argparse.ArgumentParser) -> None:
    """--rope-scaling and --rope-factor for a command that reads a checkpoint (sample, viz):
    run a rope model with a context-extension method zero-shot (default: the checkpoint's)."""
    g = p.add_argument_group("context extension (rope checkpoints; default: the checkpoint's)")
    add_model_flags(g, EXTENSION_SETTINGS, lambda name: "the checkpoint's")


def extension(args: argparse.Namespace) -> dict[str, Any]:
    """The context-extension settings given on the command line (see add_extension_flags)."""
    return {name: getattr(args, name) for name in EXTENSION_SETTINGS}


def add_which_flag(p: argparse.ArgumentParser) -> None:
    """--which, for every command that reads a checkpoint's weights."""
    p.add_argument("--which", choices=WHICH, default="last",
                   help="latest weights, or those with the best validation loss (default: last)")


def overrides(args: argparse.Namespace, base: RunConfig
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and train settings given explicitly on the command line; `base` is the config
    they apply to (its tokenizer says what --vocab-size means)."""
    m_fields = field_types(ModelConfig)
    model, train = {}, {}
    for k, v in vars(args).items():
        if k.startswith("cfg_") and v is not None:
            name = k[4:]
            (model if name in m_fields else train)[name] = v
    if getattr(args, "vocab_size_flag", None) is not None:
        train[vocab_field(train.get("tokenizer", base.train.tokenizer))] = args.vocab_size_flag
    return model, train


def build_config(args: argparse.Namespace, default_preset: str = "small",
                 base: RunConfig | None = None, init_model: ModelConfig | None = None
                 ) -> RunConfig:
    """preset < --config FILE.toml < flags; `base` stands in for the preset when none is given
    (a resumed run starts from its saved config); `init_model` (the --init-from checkpoint's)
    replaces the model settings the flags apply to."""
    cfg = preset(args.preset) if args.preset else base or preset(default_preset)
    if getattr(args, "config", None):
        file = load_toml(args.config)
        if not isinstance(file, dict):
            raise ConfigError(f"config file {args.config} must hold a table.")
        if "preset" in file and not args.preset:
            cfg = preset(file["preset"])
        with file_names(f"config file {args.config}"):
            cfg = merge(cfg, file.get("model"), file.get("train"),
                        where=f"config file {args.config}")
        unknown = set(file) - {"model", "train", "preset"}
        if unknown:
            raise ConfigError(f"config file {args.config} has unknown section(s) "
                              f"{', '.join(sorted(unknown))}; use [model] and [train].")
    if init_model is not None:
        cfg = RunConfig(model=init_model, train=cfg.train)
    model, train = overrides(args, cfg)
    return merge(cfg, model, train, where="command line")


def describe(cfg: RunConfig) -> str:
    m, t = cfg.model, cfg.train
    return (f"{m.n_layer} layers, {m.n_head} heads, d_model {m.d_model}, context {m.block_size}, "
            f"pos {m.pos}; {t.tokenizer} tokens from {t.data}; batch {t.batch_size}"
            f"x{t.grad_accum}, {t.max_steps} steps, lr {t.lr}")


__all__ = ["add_config_flags", "add_settings_flags", "given_settings", "add_extension_flags",
           "extension", "add_model_flags", "add_which_flag", "overrides", "build_config",
           "describe", "RunConfig"]
