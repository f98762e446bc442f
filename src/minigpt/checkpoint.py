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
from safetensors.torch import save as st_save
from torch.overrides import TorchFunctionMode

from .version import __version__
from .config import RunConfig, merge
from .errors import CheckpointError, ConfigError, MiniGPTError, arg
from .files import StagedFiles, atomic_write_bytes, remove_stale_temps
from .model import GPT
from .positional import REGISTRY
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


class _SkipRandomInit(TorchFunctionMode):
    """Skip the random fills of nn defaults: on the meta device they only cost time (their
    Python reference kernels import torch._dynamo, about a second per process)."""

    SKIP = frozenset({"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_",
                      "kaiming_normal_", "xavier_uniform_", "xavier_normal_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.SKIP:
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def expected_shapes(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes implied by a config, computed without allocating them."""
    if cfg.model.vocab_size < 1:
        raise CheckpointError("the checkpoint's config.json gives no vocab_size, so its "
                              "tensors cannot be checked; it is not a complete checkpoint.")
    with torch.device("meta"), _SkipRandomInit():
        m = GPT(cfg.model, init=False)
    return {k: tuple(v.shape) for k, v in m.state_dict().items() if k != "lm_head.weight"}


def _check_finite(tensors: dict[str, torch.Tensor], step: int) -> None:
    """Refuse to save weights that overflowed: a bad checkpoint must never replace a good one."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise MiniGPTError(
            f"the weights became NaN or infinite by step {step} ({bad[0]}); lower the learning "
            f"rate ({arg('lr')}), keep {arg('grad_clip')} on or raise {arg('warmup_steps')}. The "
            "last good checkpoint was kept.")


def _write(path: Path, data: bytes, files: StagedFiles | None) -> None:
    """Atomically now, or staged in `files` to be committed with the rest of a checkpoint."""
    if files is None:
        atomic_write_bytes(path, data)
    else:
        files.write(path, data)


def save_weights(path: Path, model: GPT, step: int, files: StagedFiles | None = None) -> None:
    state = model_state(model)
    _check_finite(state, step)
    _write(path, st_save(state, metadata={"step": str(step)}), files)


def write_config(out: Path, cfg: RunConfig, step: int, extra: dict | None = None,
                 files: StagedFiles | None = None) -> None:
    text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "minigpt_version": __version__,
                       "step": step, **cfg.to_dict(), **(extra or {})},
                      indent=2, ensure_ascii=False) + "\n"
    _write(out / "config.json", text.encode("utf-8"), files)


def save_trainer_state(out: Path, model: GPT, optimizer: torch.optim.Optimizer,
                       state: dict[str, Any], rank_rng: list[torch.Tensor] | None = None,
                       files: StagedFiles | None = None) -> None:
    """Weights, optimizer moments and RNG states in one safetensors file (atomic)."""
    weights = model_state(model)
    _check_finite(weights, int(state.get("step", -1)))
    tensors = {f"model.{k}": v for k, v in weights.items()}
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
    _write(out / STATE_FILE, st_save(tensors, metadata=meta), files)


def never_saved(out: Path) -> bool:
    """True for a training run with no complete checkpoint yet, which restarts from step 0.

    A checkpoint commits best weights, then the trainer state, then model.safetensors and
    config.json; so a run without a trainer state has completed no checkpoint, unless it has
    model.safetensors: then it is an imported checkpoint, or one whose trainer state was lost,
    and starting it over would throw its weights away.
    """
    if (out / STATE_FILE).exists() or (out / WEIGHT_FILES["last"]).exists():
        return False
    try:
        raw = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "imported_from" not in raw


def load_trainer_state(out: Path, model: GPT, optimizer: torch.optim.Optimizer,
                       rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from trainer_state.safetensors; return its state.

    Names, shapes and dtypes are checked against `model` and `optimizer` from the file's
    header before any tensor is read. A run stopped before its first checkpoint was complete
    (`never_saved`) resumes from step 0: `model`, `optimizer` and the RNG are left as built,
    which is exactly how a fresh run starts.
    """
    path = out / STATE_FILE
    if rank == 0:
        remove_stale_temps(out)  # half-written files of a killed run
    if not path.exists():
        if never_saved(out):
            return {"step": 0, "best_val": float("inf"), "restart": True}  # nothing saved yet
        raise CheckpointError(
            f"{out} has weights but no {STATE_FILE} (it was imported, or its trainer state was "
            f"removed), so it cannot be resumed; start a new run from its weights with "
            f"{arg('init_from', repr(str(out)))}, or delete it and start again.")
    tensors, state, groups = _read_trainer_state(path, model, optimizer)
    _restore_optimizer(path, optimizer, tensors, groups)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    getattr(model, "_orig_mod", model).load_state_dict(weights, strict=False)
    _restore_rng(tensors, rank)
    return state


def _read_trainer_state(path: Path, model: GPT, optimizer: torch.optim.Optimizer
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[Any]]:
    """The file's tensors, its state (step, best_val) and its optimizer param groups, after
    its header has been checked against `model` and `optimizer`."""
    want = {k: tuple(v.shape) for k, v in model_state(model).items()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:
        with safe_open(str(path), "pt") as f:  # the header first: names and shapes
            meta = f.metadata() or {}
            names = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names}
            _check_tensors({k[6:]: v for k, v in shapes.items() if k.startswith("model.")},
                           want, path)
            _check_state_names(shapes, params, path)
            tensors = {k: f.get_tensor(k) for k in names}
        state = json.loads(meta["state"])
        groups = json.loads(meta["param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e.__class__.__name__}).") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and state["step"] >= 0
            and isinstance(state.get("best_val"), (int, float))):
        raise CheckpointError(f"{path} holds no valid step; it is corrupt.")
    if not (isinstance(groups, list) and len(groups) == len(optimizer.param_groups)
            and all(isinstance(g, dict) for g in groups)):
        raise CheckpointError(f"{path} holds optimizer settings for another model.")
    return tensors, state, groups


def _restore_optimizer(path: Path, optimizer: torch.optim.Optimizer,
                       tensors: dict[str, torch.Tensor], groups: list[Any]) -> None:
    """Load the `optim.{index}.{key}` tensors and the param groups into `optimizer`."""
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} holds optimizer state for another model ({e}).") from None


def _restore_rng(tensors: dict[str, torch.Tensor], rank: int) -> None:
    """This rank's CPU RNG state (the shared one in single-process files) and CUDA's."""
    torch.set_rng_state(tensors.get(f"rng.cpu.rank{rank}", tensors["rng.cpu"]))
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())
                   if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)


def _check_state_names(shapes: dict[str, tuple[int, ...]], params: list[torch.Tensor],
                       path: Path) -> None:
    """Optimizer moments shaped like their parameters, and a CPU RNG state of the right size."""
    rng = tuple(torch.get_rng_state().shape)
    for k, shape in shapes.items():
        if k.startswith("model."):
            continue
        if k.startswith("optim."):
            parts = k.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
                raise CheckpointError(f"{path} has optimizer tensor {k} for no parameter of "
                                      "this model.")
            p = params[int(parts[1])]
            if parts[2] in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") and \
                    shape != tuple(p.shape):
                raise CheckpointError(f"{path}: optimizer tensor {k} has shape {list(shape)} "
                                      f"but its parameter has {list(p.shape)}.")
        elif k.startswith("rng.cpu"):
            if shape != rng:
                raise CheckpointError(f"{path}: {k} is not a CPU random-generator state.")
        elif not k.startswith("rng.cuda."):
            raise CheckpointError(f"{path} has tensor {k}, which no trainer state holds.")
    if "rng.cpu" not in shapes:
        raise CheckpointError(f"{path} has no random-generator state; it is incomplete.")


def check_trainer_state(out: Path, cfg: RunConfig) -> None:
    """Before a resume builds its model: the state file's weights match the saved config.

    Reads only the header, so a config.json edited to absurd (but allowed) sizes is refused
    without allocating them.
    """
    path = out / STATE_FILE
    if not path.exists():
        return
    try:
        with safe_open(str(path), "pt") as f:
            names = list(f.keys())
            shapes = {k[6:]: tuple(f.get_slice(k).get_shape()) for k in names
                      if k.startswith("model.")}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e.__class__.__name__}).") from None
    _check_tensors(shapes, expected_shapes(cfg), path)


def read_config(ckpt: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    ckpt_dir = Path(ckpt)
    if ckpt_dir.is_file():
        raise CheckpointError(f"{ckpt_dir} is a file; give the checkpoint directory that holds "
                              f"it ({ckpt_dir.parent}).")
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist.")
    p = ckpt_dir / "config.json"
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        runs = sorted(q.parent.name for q in ckpt_dir.glob("runs/*/config.json"))
        if runs:
            raise CheckpointError(
                f"{ckpt_dir} is a study (minigpt compare output), not one checkpoint; give one "
                f"of its runs ({ckpt_dir / 'runs' / runs[0]}, the runs/<pos>-s<seed> folders), "
                f"or serve them all with minigpt serve --study {ckpt_dir}.") from None
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint: config.json is missing."
                              ) from None
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
        why = e.args[0].removeprefix(f"{p}: ")
        raise CheckpointError(f"{p} holds an invalid config: {why}") from None
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


def weights_path(ckpt_dir: Path, which: str = "last") -> Path:
    """The weights file `which` names; a missing one is explained (best: not evaluated yet)."""
    wpath = ckpt_dir / WEIGHT_FILES[which]
    if wpath.exists():
        return wpath
    if which == "best" and (ckpt_dir / WEIGHT_FILES["last"]).exists():
        raise CheckpointError(f"{ckpt_dir} has no best weights yet: its run has not been evaluated "
                              f"(best weights are kept from the first evaluation on); use "
                              f"{arg('which', repr('last'))} for its latest weights.")
    raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint: {wpath.name} is missing.")


def check_weights(ckpt_dir: Path, cfg: RunConfig, which: str = "last",
                  raw: dict[str, Any] | None = None) -> None:
    """The weights file's header (names and shapes) matches `cfg`; nothing is allocated.
    `raw` is the directory's config.json when the caller has already read it."""
    wpath = weights_path(ckpt_dir, which)
    try:
        with safe_open(str(wpath), "pt") as f:
            names = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{wpath} is corrupt or truncated ({e.__class__.__name__})."
                              ) from None
    _check_header(shapes, cfg, raw if raw is not None else read_config(ckpt_dir)[1], wpath)


def _check_header(shapes: dict[str, tuple[int, ...]], cfg: RunConfig, raw: dict[str, Any],
                  path: Path) -> dict[str, torch.Tensor]:
    """Check a weights file's tensor names and shapes against `cfg`, counting the tensors an
    older checkpoint lacks as present; return those (`legacy_tensors`)."""
    legacy = legacy_tensors(cfg, raw, shapes)
    _check_tensors({**shapes, **{k: tuple(v.shape) for k, v in legacy.items()}},
                   expected_shapes(cfg), path)
    return legacy


def legacy_tensors(cfg: RunConfig, raw: dict[str, Any], found: Any) -> dict[str, torch.Tensor]:
    """The tensors that a checkpoint written by an older minigpt lacks (not in `found`), with
    the values that make its model compute what it computed then; its encoding knows which."""
    saved = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    state = REGISTRY[cfg.model.pos].legacy_state(cfg.model, saved)
    return {f"pos.{k}": v for k, v in state.items() if f"pos.{k}" not in found}


def extended(cfg: RunConfig, settings: dict[str, Any] | None) -> RunConfig:
    """`cfg` with context-extension settings changed for this use of its weights (sampling or
    evaluating a rope checkpoint zero-shot with rope_scaling and rope_factor): only the
    settings its encoding lists in `extension_settings` may be given; None values are left."""
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    if not given:
        return cfg
    allowed = REGISTRY[cfg.model.pos].extension_settings
    wrong = sorted(set(given) - set(allowed))
    if wrong:
        flags = ", ".join(arg(k) for k in wrong)
        raise ConfigError(
            f"{flags} cannot change for a {cfg.model.pos} checkpoint: " + (
                f"only {', '.join(arg(k) for k in allowed)} may." if allowed else
                "its encoding has no context-extension methods (they are rope's)."))
    return merge(cfg, given, None, where="command line")


def load(ckpt: str | Path, which: str = "last", device: str | torch.device = "cpu",
         extension: dict[str, Any] | None = None
         ) -> tuple[GPT, Tokenizer, RunConfig, dict[str, Any]]:
    """Load a checkpoint directory -> (model in eval mode, tokenizer, config, raw config).

    `extension` changes context-extension settings for this use (see `extended`), e.g.
    {"rope_scaling": "yarn", "rope_factor": 4.0} to run a rope model at 4x its length
    zero-shot; the config returned has them."""
    ckpt_dir = Path(ckpt)
    cfg, raw = read_config(ckpt_dir)
    cfg = extended(cfg, extension)
    if which not in WEIGHT_FILES:
        raise MiniGPTError(f"which must be one of {', '.join(WEIGHT_FILES)}, got {which!r}.")
    wpath = weights_path(ckpt_dir, which)
    tok = load_tokenizer_for(ckpt_dir, cfg)
    try:
        with safe_open(str(wpath), "pt") as f:  # header only: names and shapes
            names = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names}
            legacy = _check_header(shapes, cfg, raw, wpath)
            tensors = {k: f.get_tensor(k) for k in names} | legacy
    except (SafetensorError, OSError) as e:
        why = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
        raise CheckpointError(f"{wpath} is corrupt or truncated ({why}).") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{wpath} holds NaN or infinite weights ({bad[0]}); the run that "
                              "wrote it diverged, so use another checkpoint.")
    model = GPT(cfg.model, init=False)
    model.load_state_dict(tensors, strict=False)
    model.to(device).eval()
    return model, tok, cfg, raw


def load_tokenizer_for(ckpt_dir: Path, cfg: RunConfig) -> Tokenizer:
    try:
        tok = load_tokenizer(ckpt_dir / "tokenizer.json")
    except MiniGPTError as e:
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint: {e.args[0]}") from None
    if tok.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(
            f"{ckpt_dir / 'tokenizer.json'} has {tok.vocab_size} tokens but the model expects "
            f"{cfg.model.vocab_size}; the tokenizer belongs to another model.")
    return tok
