"""The training loop: AdamW, warm-up + cosine schedule, clipping, accumulation, evaluation,
checkpoints, exact resume, safe interrupts, and DDP when launched by torchrun.

One step = `grad_accum` micro-batches of `batch_size` rows on each of `world` processes.
Batches come from `Dataset.batch(step, micro, rank)`, a pure function of the seed, so the
run is reproducible from config.json and resumes exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint
from .config import ModelConfig, RunConfig, TrainConfig, merge
from .data import Dataset, prepare
from .errors import CheckpointError, ConfigError, MiniGPTError, arg
from .files import StagedFiles
from .metrics import Console, MetricsSink, Row, truncate_metrics
from .model import GPT
from .runtime import (Dist, any_rank, autocast, autocast_dtype, barrier, rank_rng_states,
                      setup_distributed, should_compile)


Log = Callable[[str], None]


@dataclass
class TrainResult:
    out: Path
    step: int
    best_val_loss: float
    final_val_loss: float
    elapsed: float  # seconds of training in this process (excluding start-up)
    tokens_per_s: float
    interrupted: bool = False
    nothing_to_do: bool = False  # a resume of a run already at its stop step: no step taken
    params: int = 0
    pos_params: int = 0
    peak_mem_mb: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


# --- schedule and optimizer ----------------------------------------------------------------

def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to lr, then cosine decay to min_lr at lr_decay_steps (0: max_steps),
    and min_lr after it (as nanoGPT's lr_decay_iters)."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    span = max(1, decay_steps(tc) - tc.warmup_steps)
    progress = min(1.0, (step - tc.warmup_steps) / span)
    return tc.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


def decay_steps(tc: TrainConfig) -> int:
    """The step where the learning rate reaches min_lr."""
    return tc.lr_decay_steps or tc.max_steps


def make_optimizer(model: GPT, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, LayerNorms or 1-d params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {}
    if device.type in ("cuda", "cpu"):  # one fused kernel instead of ~10 ops per tensor
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), **kwargs)


# --- evaluation ----------------------------------------------------------------------------

@torch.no_grad()
def estimate_loss(model: torch.nn.Module, data: Dataset, split: str, cfg: RunConfig,
                  device: torch.device, amp: torch.dtype | None, ranks: Dist = Dist()) -> float:
    """Mean loss over `eval_iters` fixed batches of a split (the same batches every time)."""
    tc = cfg.train
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for i in range(tc.eval_iters):
        x, y = data.batch(split, step=-1 - i, micro=0, batch_size=tc.batch_size,
                          block_size=cfg.model.block_size, seed=tc.seed, mode=tc.batching,
                          rank=ranks.rank, world=ranks.world)
        with autocast(device, amp):
            _, loss = model(x.to(device), y.to(device))
        total += loss.float()
    if ranks.enabled:
        dist.all_reduce(total)
        total /= ranks.world
    model.train(was_training)
    return float(total) / tc.eval_iters


# --- the run -------------------------------------------------------------------------------

class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step. A second one stops at once:
    it aborts the step in progress, or abandons a checkpoint being written (its files are
    staged, so the previous checkpoint stays whole). While a staged checkpoint is renamed
    into place (milliseconds), a signal waits for it to finish."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.saving = False
        self.committing = False
        self.abort_after_commit = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = name
            if self.saving:  # os.write: print() is not safe inside a signal handler
                os.write(2, SAVING_NOTE.encode())
            return
        if self.committing:
            self.abort_after_commit = True
            return
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


SAVING_NOTE = "saving checkpoint, Ctrl-C again to abandon this save\n"
# settings a resumed run may change; anything else would make it a different run
RESUMABLE = ("max_steps", "device", "eval_interval", "log_interval", "compile", "sample_tokens",
             "sample_temperatures", "sample_prompt")


def resume_config(cfg: RunConfig, out: Path) -> tuple[RunConfig, dict[str, Any]]:
    """The config a resume of `out` trains with, and its raw config.json: the saved config
    with the settings in RESUMABLE taken from `cfg`. Any other setting of `cfg` must equal the
    saved one (a `vocab_size` of 0 means "from the tokenizer"); each that differs is named
    with its old and new value."""
    saved, raw = checkpoint.read_config(out)
    changed = []
    for section in ("model", "train"):
        old, new = getattr(saved, section).__dict__, getattr(cfg, section).__dict__
        for k, v in new.items():
            if k in RESUMABLE or old[k] == v or (k in ("vocab_size", "lr_decay_steps")
                                                 and v == 0):
                continue
            changed.append(f"{arg(k)} {old[k]!r} -> {v!r}")
    if changed:
        raise ConfigError(
            f"cannot resume {out} with changed settings ({'; '.join(changed)}); only "
            f"{', '.join(arg(k) for k in RESUMABLE)} may change, so drop the others, or start "
            "a new run in another output directory.")
    keep = {k: getattr(cfg.train, k) for k in RESUMABLE}
    if keep["max_steps"] != saved.train.max_steps:  # the schedule of the run stays as it was
        keep["lr_decay_steps"] = decay_steps(saved.train)
    return merge(saved, None, keep, where="resume"), raw


def flags_base(out: Path, *, resume: bool, init_from: str | Path | None
               ) -> tuple[RunConfig | None, ModelConfig | None]:
    """What the settings a command line leaves out mean for this run, by the rules
    resume_config and init_config then enforce: a resume starts from the saved config (when
    `out` has one), so flags apply to the saved run and only real changes are named; a run
    from `init_from` takes the checkpoint's model settings (its config's `model`)."""
    saved = checkpoint.read_config(out)[0] if resume and (out / "config.json").exists() else None
    init_model = checkpoint.read_config(init_from)[0].model if init_from else None
    return saved, init_model


INIT_CHANGEABLE = ("dropout",)  # model settings a run started from a checkpoint may change


def init_changeable(pos: str) -> tuple[str, ...]:
    """The model settings a run started from a checkpoint with encoding `pos` may change:
    dropout, and for an encoding with context-extension settings (rope) those and
    block_size, to fine-tune at a longer context."""
    from .positional import REGISTRY

    ext = REGISTRY[pos].extension_settings
    return (*INIT_CHANGEABLE, *(("block_size", *ext) if ext else ()))


def init_config(cfg: RunConfig, init_from: str | Path) -> RunConfig:
    """The config a run started from the `init_from` checkpoint's weights trains with: `cfg`
    with the checkpoint's model settings. Every model setting of `cfg` except those
    `init_changeable` names must equal the checkpoint's (`vocab_size` always comes from its
    tokenizer, and `rope_original_length`, the length rope was first trained at, from the
    checkpoint unless given); each that differs is named with its old and new value. The
    weights file's header is checked too, before a model of its size is built."""
    src, raw = checkpoint.read_config(init_from)
    may = init_changeable(src.model.pos)
    m = cfg.model  # settings derived from block_size: their values when not given
    derived = {"rope_original_length": m.block_size,
               "t5_max_distance": max(m.block_size, m.t5_num_buckets // 2 + 1)}
    changed = [f"{arg(k)} {v!r} -> {getattr(cfg.model, k)!r}"
               for k, v in src.model.__dict__.items()
               if k not in (*may, "vocab_size")
               and getattr(cfg.model, k) not in (v, derived.get(k, v))]
    if changed:
        raise ConfigError(
            f"{arg('init_from')} takes the model settings from the checkpoint, and these differ "
            f"({'; '.join(changed)}); only {', '.join(arg(k) for k in may)} may change.")
    checkpoint.check_weights(Path(init_from), src, raw=raw)
    keep = {k: getattr(cfg.model, k) for k in may}
    return dataclasses.replace(cfg, model=dataclasses.replace(src.model, **keep))


def check_output(out: Path, resume: bool) -> None:
    """Refuse to resume nothing or to overwrite a run (creates nothing)."""
    if resume:
        if not (out / "config.json").exists():
            raise CheckpointError(f"cannot resume: {out} holds no run (config.json missing).")
        return
    if (out / "config.json").exists() or (out / checkpoint.STATE_FILE).exists():
        raise MiniGPTError(f"{out} already holds a run; pass {arg('resume', True)} to continue "
                           f"it or choose another {arg('out')}.")


def make_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MiniGPTError(f"cannot create output directory {out}: {e.strerror}.") from None


def init_model(cfg: RunConfig, rank: int = 0) -> GPT:
    """The run's model at step 0, with the dropout stream seeded *after* it is built.

    The weights come from per-name generators (GPT.init_weights), but nn defaults (such as
    an encoding's extra nn.Embedding) draw from the global generator while the model is
    built; seeding afterwards gives every encoding the same dropout masks for a seed.
    """
    model = GPT(cfg.model, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed + rank)  # dropout streams (one per DDP rank)
    return model


def load_dataset(cfg: RunConfig, tokenizer_path: Path | None = None,
                 verbose: bool = False, log: Log | None = None) -> Dataset:
    tc = cfg.train
    return prepare(tc.data, tc.tokenizer, vocab_size=tc.vocab_size_bpe, min_freq=tc.min_freq,
                   max_vocab=tc.max_vocab, tokenizer_path=tokenizer_path, verbose=verbose,
                   log=log)


def with_vocab(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """A new, validated copy of `cfg` with the tokenizer's vocabulary size filled in."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))


# --- set-up: everything a run needs before its first step ---------------------------------

@dataclass
class RunState:
    """What the loop carries from step to step."""

    cfg: RunConfig
    out: Path
    ranks: Dist
    device: torch.device
    amp: torch.dtype | None  # the autocast dtype; None is plain fp32
    data: Dataset
    model: GPT  # the weights that are saved
    optimizer: torch.optim.AdamW
    train_model: torch.nn.Module  # what a step calls: `model`, compiled and/or DDP-wrapped
    init_from: str | None = None
    step: int = 0
    best_val: float = math.inf
    last_val: float = math.nan
    saved_step: int | None = None  # the step of the checkpoint on disk; None before the first
    history: list[Row] = field(default_factory=list)
    tokens: int = 0  # token positions this process's steps fed the model, all ranks, padding in

    @property
    def extra(self) -> dict[str, Any] | None:
        """What config.json records besides the config: the checkpoint the weights came from."""
        return {"init_from": self.init_from} if self.init_from is not None else None


def setup_run(cfg: RunConfig, out: Path, *, resume: bool = False, data: Dataset | None = None,
              init_from: str | Path | None = None, progress: bool = True,
              log: Log = print) -> RunState:
    """Check the output directory, load the data, build the model and optimizer, and restore
    the trainer state (resume) or write the run's first files; `cfg` is left as it was."""
    ranks, device = setup_distributed(cfg.train.device)
    check_output(out, resume)  # every rank checks; only rank 0 writes, after the barrier
    raw: dict[str, Any] = {}
    if resume:
        cfg, raw = resume_config(cfg, out)
        if not (out / "tokenizer.json").exists():
            raise CheckpointError(f"cannot resume: {out} was stopped before its first checkpoint "
                                  f"and holds no tokenizer.json; delete {out} and start again.")
        checkpoint.check_trainer_state(out, cfg)  # header only: nothing allocated if tampered
        init_from = raw.get("init_from")  # used again only if nothing was saved yet
    elif init_from is not None:
        cfg = init_config(cfg, init_from)
    init_from = str(init_from) if init_from is not None else None
    data = _run_data(cfg, out, ranks, data, resume, init_from, progress, log)
    if ranks.main and not resume:  # only now: bad data must not leave an empty directory behind
        make_output(out)
    cfg = with_vocab(cfg, data.tokenizer.vocab_size)
    model = init_model(cfg, ranks.rank).to(device)
    optimizer = make_optimizer(model, cfg.train, device)
    state = RunState(cfg, out, ranks, device, autocast_dtype(cfg.train, device), data, model,
                     optimizer, train_model=model, init_from=init_from)
    restart = _restore(state, raw, log) if resume else _start(state)
    state.saved_step = None if restart else state.step
    if restart and init_from is not None:
        _load_init_weights(state)
    if ranks.main:
        _announce(state, log)
    state.train_model = _wrap(state)
    return state


def _run_data(cfg: RunConfig, out: Path, ranks: Dist, data: Dataset | None, resume: bool,
              init_from: str | None, progress: bool, log: Log = print) -> Dataset:
    """The run's dataset, tokenized with the run's (or the init checkpoint's) tokenizer."""
    tok_path = out / "tokenizer.json" if resume else None
    if init_from is not None and not resume:
        tok_path = Path(init_from) / "tokenizer.json"
    if data is None and ranks.main:  # rank 0 tokenizes into the cache, the others then read it
        data = load_dataset(cfg, tok_path, verbose=progress, log=log)
    barrier(ranks)
    data = data or load_dataset(cfg, tok_path)
    data.check_block(cfg.model.block_size)
    return data


def _start(state: RunState) -> bool:
    """A new run: its tokenizer, then config.json, which marks a run in `out`."""
    if state.ranks.main:
        state.data.tokenizer.save(state.out / "tokenizer.json")
        checkpoint.write_config(state.out, state.cfg, 0, state.extra)
    return True


def _restore(state: RunState, raw: dict[str, Any], log: Log) -> bool:
    """Load the trainer state of a resumed run; True if it had nothing saved (restart)."""
    out, main = state.out, state.ranks.main
    saved = checkpoint.load_trainer_state(out, state.model, state.optimizer,
                                          rank=state.ranks.rank)
    state.step, state.best_val = int(saved["step"]), float(saved["best_val"])
    restart = bool(saved.get("restart"))
    if main:
        state.history = truncate_metrics(out / "metrics.jsonl", state.step)
    if main and restart:
        log(f"{out} has no complete checkpoint yet; training it again from step 0.")
    elif main:
        log(f"resuming {out} from its checkpoint at step {state.step}")
        tc, before = state.cfg.train, raw.get("train", {}).get("max_steps")
        if isinstance(before, int) and before != tc.max_steps and state.step < tc.max_steps:
            log(f"max steps {before} -> {tc.max_steps}: the learning rate keeps this run's "
                f"schedule (cosine to {tc.min_lr:g} at step {decay_steps(tc)}, then flat), "
                f"so this is not one {tc.max_steps}-step run; for a new schedule, start a new "
                f"run from these weights with init_from (--init-from {out}).")
    if main and not restart and raw.get("step") != state.step:  # stopped between the files
        checkpoint.save_weights(out / "model.safetensors", state.model, state.step)
        checkpoint.write_config(out, state.cfg, state.step, state.extra)
    return restart


def _load_init_weights(state: RunState) -> None:
    """Start from the weights of the `init_from` checkpoint (fine-tuning)."""
    if not (Path(state.init_from) / "config.json").exists():
        raise CheckpointError(f"{state.out} was started from {state.init_from}, which is gone; "
                              "start a new run.")
    checkpoint.check_weights(Path(state.init_from), state.cfg)  # it may have changed since
    src, _, _, _ = checkpoint.load(state.init_from)
    state.model.load_state_dict(src.state_dict())


def _announce(state: RunState, log: Log) -> None:
    """The header line, and a note when BPE made fewer tokens than asked for."""
    tc, tok = state.cfg.train, state.data.tokenizer
    log(header(state.cfg, state.model, state.device, state.amp, state.ranks.world, tok.kind))
    if tc.tokenizer == "bpe" and state.init_from is None and tok.vocab_size < tc.vocab_size_bpe:
        log(f"note: BPE training on {tc.data} made {tok.vocab_size} tokens, fewer than the "
            f"{tc.vocab_size_bpe} asked for: the corpus has no more pairs to merge.")


def _wrap(state: RunState) -> torch.nn.Module:
    """The module a step calls: compiled where it pays off, wrapped in DDP under torchrun."""
    wrapped: torch.nn.Module = state.model
    if should_compile(state.cfg.train, state.device, state.cfg.train.max_steps - state.step):
        wrapped = torch.compile(state.model)
    if state.ranks.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = state.device
        wrapped = DDP(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


# --- the step, evaluation and checkpoints ---------------------------------------------------

def train_step(state: RunState) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One optimizer step: `grad_accum` micro-batches, clipping, AdamW. Returns the learning
    rate, the sum of the micro-batch losses and the gradient norm (tensors: reading them
    waits for the device)."""
    cfg, tc, ranks, device = state.cfg, state.cfg.train, state.ranks, state.device
    lr = lr_at(state.step, tc)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    for micro in range(tc.grad_accum):
        x, y = state.data.batch("train", step=state.step, micro=micro, batch_size=tc.batch_size,
                                block_size=cfg.model.block_size, seed=tc.seed, mode=tc.batching,
                                rank=ranks.rank, world=ranks.world)
        # (B, L) rows of text, or (B, longest example) rows with --batching documents; under
        # DDP every rank is counted as this one (document rows differ a little in length)
        state.tokens += x.numel() * ranks.world
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync = not ranks.enabled or micro == tc.grad_accum - 1  # DDP: all-reduce once
        with state.train_model.no_sync() if not sync else contextlib.nullcontext():
            with autocast(device, state.amp):
                _, loss = state.train_model(x, y)
            (loss / tc.grad_accum).backward()
        loss_sum += loss.detach().float()
    if tc.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
    else:
        grad_norm = torch.zeros((), device=device)
    check_now = device.type == "cpu" or (state.step + 1) % tc.log_interval == 0  # a GPU sync
    if check_now and not math.isfinite(float(loss_sum)):
        raise MiniGPTError(
            f"the training loss became {float(loss_sum / tc.grad_accum)} at step "
            f"{state.step + 1}; lower the learning rate ({arg('lr')}) or raise "
            f"{arg('warmup_steps')}. The last good checkpoint was kept.")
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return lr, loss_sum, grad_norm


def evaluate_and_checkpoint(state: RunState, sink: MetricsSink, stop: _StopFlag,
                            evaluate: bool, t_start: float) -> None:
    """Estimate the validation and training losses (if `evaluate`), then save a checkpoint."""
    val = None
    if evaluate:
        val, trn = (estimate_loss(state.train_model, state.data, split, state.cfg, state.device,
                                  state.amp, state.ranks) for split in ("val", "train"))
        state.last_val = val
        sink.log({"step": state.step, "val_loss": val, "val_ppl": math.exp(min(val, 50)),
                  "train_loss_eval": trn, "elapsed": time.perf_counter() - t_start})
    save_checkpoint(state, val, stop, sink.console)


def save_checkpoint(state: RunState, val: float | None, stop: _StopFlag,
                    console: Console) -> None:
    """One checkpoint, all files or none: staged, then renamed into place together."""
    out, model, step = state.out, state.model, state.step
    if val is not None and not math.isfinite(val):  # every rank stops together
        raise MiniGPTError(
            f"the validation loss became {val} at step {step}; lower the learning rate "
            f"({arg('lr')}) or raise {arg('warmup_steps')}. The last good checkpoint was kept.")
    rng = rank_rng_states(state.ranks)  # a collective: every rank takes part
    if not state.ranks.main:
        return
    improved = val is not None and val < state.best_val
    stop.saving = True
    if stop.requested:
        console.note(SAVING_NOTE.rstrip())
    try:
        with StagedFiles() as files:
            if improved:
                checkpoint.save_weights(out / "best.safetensors", model, step, files)
            best = val if improved else state.best_val
            checkpoint.save_trainer_state(out, model, state.optimizer,
                                          {"step": step, "best_val": best}, rank_rng=rng,
                                          files=files)
            checkpoint.save_weights(out / "model.safetensors", model, step, files)
            checkpoint.write_config(out, state.cfg, step, state.extra, files)
            stop.committing = True
            files.commit()
    finally:
        stop.saving = stop.committing = False
    if improved:
        state.best_val = val
    state.saved_step = step
    if stop.abort_after_commit:
        raise KeyboardInterrupt


# --- the run ---------------------------------------------------------------------------------

@dataclass
class _Clock:
    """Wall time of this process's training, for tokens/s and the `elapsed` column."""

    t_start: float = field(default_factory=time.perf_counter)
    t_last: float = 0.0
    tokens_last: int = 0  # state.tokens at the last logged step

    def __post_init__(self) -> None:
        self.t_last = self.t_start


def train_row(state: RunState, clock: _Clock, lr: float, loss_sum: torch.Tensor,
              grad_norm: torch.Tensor) -> Row:
    """The metrics row of a logged step; tokens/s is measured since the last logged step."""
    now = time.perf_counter()
    tps = (state.tokens - clock.tokens_last) / max(now - clock.t_last, 1e-9)
    clock.t_last, clock.tokens_last = now, state.tokens
    return {"step": state.step, "train_loss": float(loss_sum) / state.cfg.train.grad_accum,
            "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tps,
            "elapsed": now - clock.t_start}


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, until: int | None = None,
          progress: bool = True, data: Dataset | None = None, init_from: str | Path | None = None,
          log: Log = print) -> TrainResult:
    """Train (or resume) a model into the checkpoint directory `out`.

    `resume=True` continues the run in `out`: `cfg` must equal its saved config except for
    the settings in RESUMABLE (max_steps, device, ...), which it may change. A run with no
    complete checkpoint yet starts again from step 0. `init_from` starts from another
    checkpoint's weights and tokenizer (fine-tuning); its model shapes must match `cfg.model`.
    `progress` shows a bar on a terminal or a line per log interval elsewhere; `log` gets the
    header and the notes of the run.
    """
    state = setup_run(cfg, Path(out), resume=resume, data=data, init_from=init_from,
                      progress=progress, log=log)
    tc = state.cfg.train
    stop_at = min(tc.max_steps, until) if until is not None else tc.max_steps
    if resume and state.saved_step is not None and state.step >= stop_at:
        if state.ranks.main:
            why = (f"it is already finished (max steps {tc.max_steps}); give a larger max "
                   "steps to train it further" if state.step >= tc.max_steps
                   else f"the stop step {stop_at} is not after it")
            log(f"{state.out} is at step {state.step} and nothing was trained: {why}.")
        return TrainResult(out=state.out, step=state.step, best_val_loss=state.best_val,
                           final_val_loss=state.last_val, elapsed=0.0, tokens_per_s=0.0,
                           params=state.model.num_params(),
                           pos_params=state.model.pos.num_params(), history=state.history,
                           nothing_to_do=True)
    interrupted, sink = None, None
    try:
        with _StopFlag() as stop:  # before metrics.jsonl appears: any signal from then on stops
            sink = MetricsSink(state.out, state.step, tc.max_steps, state.history,
                               main=state.ranks.main, progress=progress)
            clock = _Clock()
            state.model.train()
            while state.step < stop_at:
                lr, loss_sum, grad_norm = train_step(state)
                if state.step % tc.log_interval == 0 or state.step == stop_at:
                    sink.log(train_row(state, clock, lr, loss_sum, grad_norm))
                sink.console.update(state.step)
                evaluate = state.step % tc.eval_interval == 0 or state.step == tc.max_steps
                stopping = any_rank(state.ranks, stop.requested is not None, state.device)
                if evaluate or state.step == stop_at or stopping:
                    evaluate_and_checkpoint(state, sink, stop, evaluate, clock.t_start)
                if stopping:
                    interrupted = stop.requested or "a signal on another rank"
                    break
    except KeyboardInterrupt:
        if state.ranks.main:
            if sink is not None:
                sink.console.close()
            kept = (f"the checkpoint of step {state.saved_step} is kept" if state.saved_step
                    else "no checkpoint was saved yet")
            log(f"stopped at once at step {state.step}; {kept}.")
        raise
    finally:
        if sink is not None:
            sink.close()
    return finish(state, clock, interrupted, log)


def finish(state: RunState, clock: _Clock, interrupted: str | None, log: Log) -> TrainResult:
    """Say how the run ended, draw the loss curve of a finished run, and sum it up."""
    elapsed = time.perf_counter() - clock.t_start
    main, step, out = state.ranks.main, state.step, state.out
    if main and interrupted:
        log(f"stopped by {interrupted} at step {step}; the checkpoint is saved in {out}.")
    if main and not interrupted and step >= state.cfg.train.max_steps:
        from .plots import loss_curve

        loss_curve(state.history, out / "loss.png", title=f"{state.cfg.model.pos} · {out.name}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if state.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(state.device) / 2**20
    model = state.model
    return TrainResult(out=out, step=step, best_val_loss=state.best_val,
                       final_val_loss=state.last_val, elapsed=elapsed,
                       tokens_per_s=state.tokens / max(elapsed, 1e-9),
                       interrupted=bool(interrupted), params=model.num_params(),
                       pos_params=model.pos.num_params(), peak_mem_mb=peak, history=state.history)


def header(cfg: RunConfig, model: GPT, device: torch.device, amp: torch.dtype | None,
           world: int, tokenizer: str) -> str:
    """One line: vocabulary, parameters (total, positional), device, dtype, tokens per step."""
    tc, L = cfg.train, cfg.model.block_size
    dtype = "bfloat16 autocast" if amp == torch.bfloat16 else "float32"
    procs = f" x {world} processes" if world > 1 else ""
    most, rows = ("at most ", f"rows of up to {L}") if tc.batching == "documents" \
        else ("", f"{L} tokens")
    return (f"vocabulary {cfg.model.vocab_size} ({tokenizer}); {model.num_params():,} "
            f"parameters ({model.pos.num_params():,} positional); device {device}, {dtype}; "
            f"{most}{tc.batch_size * L * tc.grad_accum * world:,} tokens per step "
            f"({tc.batch_size} x {rows} x {tc.grad_accum} accumulation{procs})")
