"""The checkpoint directory: the contract between training, sampling, evaluation and export.

    config.json                model + training config, step, format version
    tokenizer.json             the tokenizer (JSON)
    model.safetensors          the latest weights
    best.safetensors           the weights with the best validation loss so far
    trainer_state.safetensors  weights + optimizer moments + RNG states + step: one file, so a
                               resume can never mix two steps; written atomically
    metrics.jsonl              one JSON object per logged step

Nothing here is unpickled: tensors are safetensors, everything else JSON. Before any tensor
is used, its name and shape are checked against the shapes the config implies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .config import RunConfig
from .errors import CheckpointError, ConfigError, MiniGPTError
from .io import atomic_write_bytes, atomic_write_json
from .model import GPT
from .tokenizers import Tokenizer, load_tokenizer

FORMAT = "minigpt-checkpoint"
FORMAT_VERSION = 1
WEIGHT_FILES = {"last": "model.safetensors", "best": "best.safetensors"}
STATE_FILE = "trainer_state.safetensors"


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """The weights to save: tied lm_head left out (it is tok_emb), tensors made contiguous."""
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if k != "lm_head.weight"}


def expected_shapes(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes implied by a config, computed without allocating them."""
    with torch.device("meta"):
        m = GPT(cfg.model, init=False)
    return {k: tuple(v.shape) for k, v in m.state_dict().items() if k != "lm_head.weight"}


def save_weights(path: Path, model: GPT, step: int) -> None:
    atomic_write_bytes(path, st_save(model_state(model), metadata={"step": str(step)}))


def write_config(out: Path, cfg: RunConfig, step: int, extra: dict | None = None) -> None:
    atomic_write_json(out / "config.json", {
        "format": FORMAT, "version": FORMAT_VERSION, "minigpt_version": __version__,
        "step": step, **cfg.to_dict(), **(extra or {})})


def save_trainer_state(out: Path, model: GPT, optimizer: torch.optim.Optimizer,
                       state: dict[str, Any], rank_rng: list[torch.Tensor] | None = None
                       ) -> None:
    """Weights, optimizer moments and RNG states in one safetensors file (atomic)."""
    tensors = {f"model.{k}": v for k, v in model_state(model).items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"optim.{idx}.{key}"] = t.detach().contiguous().cpu()
    tensors["rng.cpu"] = torch.get_rng_state()
    for r, st in enumerate(rank_rng or []):  # DDP: each rank's own dropout stream
        tensors[f"rng.cpu.rank{r}"] = st
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {"state": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
    atomic_write_bytes(out / STATE_FILE, st_save(tensors, metadata=meta))


def load_trainer_state(out: Path, model: GPT, optimizer: torch.optim.Optimizer,
                       rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from trainer_state.safetensors; return its state."""
    path = out / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{out} has no {STATE_FILE}, so it cannot be resumed.")
    try:
        raw = path.read_bytes()
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = st_load(raw)
        state = json.loads(meta["state"])
        groups = json.loads(meta["param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e.__class__.__name__}).") from None
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_tensors(weights, {k: tuple(v.shape) for k, v in model_state(model).items()}, path)
    getattr(model, "_orig_mod", model).load_state_dict(weights, strict=False)
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path} holds optimizer state for another model ({e}).") from None
    torch.set_rng_state(tensors.get(f"rng.cpu.rank{rank}", tensors["rng.cpu"]))
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())
                   if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state


def read_config(ckpt: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    d = Path(ckpt)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist.")
    p = d / "config.json"
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{d} is not a complete checkpoint: config.json is missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{p} is not readable JSON.") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a minigpt checkpoint config.")
    if raw.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{p} has format version {raw.get('version')}, this minigpt reads "
                              f"version {FORMAT_VERSION}.")
    try:
        cfg = RunConfig.from_dict({"model": raw.get("model"), "train": raw.get("train")},
                                  where=str(p))
    except ConfigError as e:
        raise CheckpointError(f"{p} holds an invalid config: {e}") from None
    return cfg, raw


def _check_tensors(found: dict[str, Any], want: dict[str, tuple[int, ...]], path: Path) -> None:
    missing = sorted(set(want) - set(found))
    if missing:
        raise CheckpointError(f"{path} is missing tensor(s) {', '.join(missing[:3])}; "
                              "the checkpoint is incomplete.")
    extra = sorted(set(found) - set(want))
    if extra:
        raise CheckpointError(f"{path} has tensor(s) {', '.join(extra[:3])} that its config "
                              "does not describe.")
    for k, shape in want.items():
        got = tuple(found[k].shape) if hasattr(found[k], "shape") else tuple(found[k])
        if got != shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {list(got)} but the config "
                                  f"implies {list(shape)}.")


def load(ckpt: str | Path, which: str = "last", device: str | torch.device = "cpu"
         ) -> tuple[GPT, Tokenizer, RunConfig, dict[str, Any]]:
    """Load a checkpoint directory -> (model in eval mode, tokenizer, config, raw config)."""
    d = Path(ckpt)
    cfg, raw = read_config(d)
    if which not in WEIGHT_FILES:
        raise MiniGPTError(f"which must be one of {', '.join(WEIGHT_FILES)}, got {which!r}.")
    wpath = d / WEIGHT_FILES[which]
    if not wpath.exists():
        raise CheckpointError(f"{d} is not a complete checkpoint: {wpath.name} is missing.")
    tok = load_tokenizer_for(d, cfg)
    want = expected_shapes(cfg)
    try:
        with safe_open(str(wpath), "pt") as f:  # header only: names and shapes
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_tensors(shapes, want, wpath)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{wpath} is corrupt or truncated ({e}).") from None
    model = GPT(cfg.model, init=False)
    model.load_state_dict(tensors, strict=False)
    model.to(device).eval()
    return model, tok, cfg, raw


def load_tokenizer_for(d: Path, cfg: RunConfig) -> Tokenizer:
    try:
        tok = load_tokenizer(d / "tokenizer.json")
    except MiniGPTError as e:
        raise CheckpointError(f"{d} is not a complete checkpoint: {e}") from None
    if tok.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(
            f"{d / 'tokenizer.json'} has {tok.vocab_size} tokens but the model expects "
            f"{cfg.model.vocab_size}; the tokenizer belongs to another model.")
    return tok
