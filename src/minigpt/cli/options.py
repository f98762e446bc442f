"""Flags generated from the typed config dataclasses (litgpt-style), so every config field is
a flag with no hand-written list; shared by `train` and `compare`."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ..config import ModelConfig, RunConfig, TrainConfig, field_types, load_toml, merge, preset
from ..errors import ConfigError

# config fields that are not flags, and flags whose names differ from their fields
SKIP = {"vocab_size"}
RENAME = {"vocab_size_bpe": "vocab-size"}
HELP = {
    "pos": "positional encoding: learned, sinusoidal, rope, alibi, nope, t5",
    "data": "'shakespeare' (embedded) or a UTF-8 .txt file or directory of them",
    "tokenizer": "char, word or bpe",
    "batching": "stream (random windows) or documents (one padded speech per row)",
    "block_size": "context length L the model is trained at",
    "vocab_size_bpe": "vocabulary size of the bpe tokenizer",
    "device": "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps",
    "dtype": "auto (bf16 autocast on CUDA), float32 or bfloat16",
    "compile": "torch.compile the model: off, on or auto",
}


def _parse_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def add_config_flags(p: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:
    """One flag per config field; defaults are None so only given flags override."""
    for cls, title in ((ModelConfig, "model"), (TrainConfig, "training")):
        g = p.add_argument_group(f"{title} settings (override preset and --config)")
        defaults = {f.name: f for f in dataclasses.fields(cls)}
        for name, typ in field_types(cls).items():
            if name in SKIP or name in skip:
                continue
            flag = "--" + RENAME.get(name, name.replace("_", "-"))
            f = defaults[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            helptext = f"{HELP.get(name, name.replace('_', ' '))} (default {default})"
            kw: dict[str, Any] = dict(dest=f"cfg_{name}", default=None, help=helptext)
            if typ is bool:
                g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            elif typing.get_origin(typ) is list:
                g.add_argument(flag, type=_parse_list, metavar="X,Y", **kw)
            else:
                g.add_argument(flag, type=typ, **kw)


def overrides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and train settings given explicitly on the command line."""
    m_fields = field_types(ModelConfig)
    model, train = {}, {}
    for k, v in vars(args).items():
        if k.startswith("cfg_") and v is not None:
            name = k[4:]
            (model if name in m_fields else train)[name] = v
    return model, train


def build_config(args: argparse.Namespace, default_preset: str = "small") -> RunConfig:
    """preset < --config FILE.toml < flags."""
    cfg = preset(args.preset or default_preset)
    if getattr(args, "config", None):
        file = load_toml(args.config)
        if not isinstance(file, dict):
            raise ConfigError(f"config file {args.config} must hold a table.")
        if "preset" in file and not args.preset:
            cfg = preset(file["preset"])
        cfg = merge(cfg, file.get("model"), file.get("train"), where=f"config file {args.config}")
        unknown = set(file) - {"model", "train", "preset"}
        if unknown:
            raise ConfigError(f"config file {args.config} has unknown section(s) "
                              f"{', '.join(sorted(unknown))}; use [model] and [train].")
    model, train = overrides(args)
    return merge(cfg, model, train, where="command line")


def describe(cfg: RunConfig) -> str:
    m, t = cfg.model, cfg.train
    return (f"{m.n_layer} layers, {m.n_head} heads, d_model {m.d_model}, context {m.block_size}, "
            f"pos {m.pos}; {t.tokenizer} tokens from {t.data}; batch {t.batch_size}"
            f"x{t.grad_accum}, {t.max_steps} steps, lr {t.lr}")


__all__ = ["add_config_flags", "overrides", "build_config", "describe", "RunConfig"]
