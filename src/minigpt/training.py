"""The training loop: AdamW, warm-up + cosine schedule, clipping, accumulation, evaluation,
checkpoints, exact resume, safe interrupts, and DDP when launched by torchrun.

One step = `grad_accum` micro-batches of `batch_size` rows on each of `world` processes.
Batches come from `Dataset.batch(step, micro, rank)`, a pure function of the seed, so the
run is reproducible from config.json and resumes exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint
from .config import RunConfig, TrainConfig, merge
from .data import Dataset, prepare
from .errors import CheckpointError, ConfigError, MiniGPTError, arg
from .io import StagedFiles, atomic_write_text
from .model import GPT


@dataclass
class TrainResult:
    out: Path
    step: int
    best_val_loss: float
    final_val_loss: float
    elapsed: float  # seconds of training in this process (excluding start-up)
    tokens_per_s: float
    interrupted: bool = False
    params: int = 0
    pos_params: int = 0
    peak_mem_mb: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


# --- devices, precision, processes ---------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MiniGPTError(f"device {name} was asked for but CUDA is not available here; "
                           "use --device cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise MiniGPTError("device mps was asked for but is not available here; use --device cpu.")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run about twice as fast as fp32 here."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def autocast_dtype(tc: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: `auto` picks bf16 on CUDA GPUs that support it and on CPUs with
    native bf16 matrix instructions (measured: same loss per step, faster), else fp32."""
    if tc.dtype == "float32":
        return None
    if tc.dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one: NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local), device


def should_compile(tc: TrainConfig, device: torch.device, steps_left: int) -> bool:
    """`--compile auto`: compile where it pays off. Measured on a 2-core CPU (small preset,
    bf16): 33.2 vs 33.5 ms per step for 13-25 s of compiling, so never on CPUs; on CUDA GPUs,
    where compiling fuses the many small kernels of a step, for runs of 1000+ steps."""
    if tc.compile != "auto":
        return tc.compile == "on"
    return device.type == "cuda" and steps_left >= 1000


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (one tiny all-reduce)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# --- schedule and optimizer ----------------------------------------------------------------

def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to lr, then cosine decay to min_lr at max_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    span = max(1, tc.max_steps - tc.warmup_steps)
    progress = min(1.0, (step - tc.warmup_steps) / span)
    return tc.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


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
                  device: torch.device, amp: torch.dtype | None, d: Dist = Dist()) -> float:
    """Mean loss over `eval_iters` fixed batches of a split (the same batches every time)."""
    tc = cfg.train
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for i in range(tc.eval_iters):
        x, y = data.batch(split, step=-1 - i, micro=0, batch_size=tc.batch_size,
                          block_size=cfg.model.block_size, seed=tc.seed, mode=tc.batching,
                          rank=d.rank, world=d.world)
        with autocast(device, amp):
            _, loss = model(x.to(device), y.to(device))
        total += loss.float()
    if d.enabled:
        dist.all_reduce(total)
        total /= d.world
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
            if k in RESUMABLE or old[k] == v or (k == "vocab_size" and v == 0):
                continue
            changed.append(f"{arg(k)} {old[k]!r} -> {v!r}")
    if changed:
        raise ConfigError(
            f"cannot resume {out} with changed settings ({'; '.join(changed)}); only "
            f"{', '.join(arg(k) for k in RESUMABLE)} may change, so drop the others, or start "
            "a new run in another output directory.")
    return merge(saved, None, {k: getattr(cfg.train, k) for k in RESUMABLE},
                 where="resume"), raw


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
                 verbose: bool = False) -> Dataset:
    tc = cfg.train
    return prepare(tc.data, tc.tokenizer, vocab_size=tc.vocab_size_bpe, min_freq=tc.min_freq,
                   max_vocab=tc.max_vocab, tokenizer_path=tokenizer_path, verbose=verbose)


def _truncate_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the metrics rows up to `step` (a resume replays what came after)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and row.get("step", 0) <= step:
            rows.append(row)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, until: int | None = None,
          progress: bool = True, data: Dataset | None = None, init_from: str | Path | None = None,
          log=print) -> TrainResult:
    """Train (or resume) a model into the checkpoint directory `out`.

    `resume=True` continues the run in `out`: `cfg` must equal its saved config except for
    the settings in RESUMABLE (max_steps, device, ...), which it may change. A run with no
    complete checkpoint yet starts again from step 0. `init_from` starts from another
    checkpoint's weights and tokenizer (fine-tuning); its model shapes must match `cfg.model`.
    `progress` shows a bar on a terminal or a line per log interval elsewhere; `log` gets the
    header and the notes of the run.
    """
    out = Path(out)
    d, device = setup_distributed(cfg.train.device)
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
        init_from = str(init_from)
    tc = cfg.train
    tok_path = out / "tokenizer.json" if resume else None
    if init_from is not None and not resume:
        tok_path = Path(init_from) / "tokenizer.json"
    if data is None and d.main:  # rank 0 tokenizes into the cache, the others then read it
        data = load_dataset(cfg, tok_path, verbose=progress)
    barrier(d)
    data = data or load_dataset(cfg, tok_path)
    data.check_block(cfg.model.block_size)
    if d.main and not resume:  # only now: bad data must not leave an empty directory behind
        make_output(out)
    cfg.model.vocab_size = data.tokenizer.vocab_size
    cfg.model.__post_init__()  # re-validate with the vocabulary filled in
    extra = {"init_from": init_from} if init_from is not None else None

    model = init_model(cfg, d.rank).to(device)
    optimizer = make_optimizer(model, tc, device)
    step, best_val = 0, float("inf")
    history: list[dict[str, Any]] = []
    restart = not resume
    if resume:
        state = checkpoint.load_trainer_state(out, model, optimizer, rank=d.rank)
        step, best_val = int(state["step"]), float(state["best_val"])
        restart = bool(state.get("restart"))
        if d.main:
            history = _truncate_metrics(out / "metrics.jsonl", step)
        if d.main and restart:
            log(f"{out} has no complete checkpoint yet; training it again from step 0.")
        elif d.main and raw.get("step") != step:  # stopped between the files of a checkpoint
            checkpoint.save_weights(out / "model.safetensors", model, step)
            checkpoint.write_config(out, cfg, step, extra)
    elif d.main:
        data.tokenizer.save(out / "tokenizer.json")  # before config.json marks a run here
        checkpoint.write_config(out, cfg, 0, extra)
    if restart and init_from is not None:
        if not (Path(init_from) / "config.json").exists():
            raise CheckpointError(f"{out} was started from {init_from}, which is gone; start "
                                  "a new run.")
        src, _, _, _ = checkpoint.load(init_from)
        model.load_state_dict(src.state_dict())
    amp = autocast_dtype(tc, device)
    tokens_per_step = tc.batch_size * cfg.model.block_size * tc.grad_accum * d.world
    if d.main:
        log(header(cfg, model, device, amp, d.world, data.tokenizer.kind))
        if tc.tokenizer == "bpe" and init_from is None and data.tokenizer.vocab_size < \
                tc.vocab_size_bpe:
            log(f"note: BPE training on {tc.data} made {data.tokenizer.vocab_size} tokens, "
                f"fewer than the {tc.vocab_size_bpe} asked for: the corpus has no more pairs "
                "to merge.")
    train_model: torch.nn.Module = model
    if should_compile(tc, device, tc.max_steps - step):
        train_model = torch.compile(model)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if d.main:
        writer = _tensorboard(out, step)
    metrics_fh = open(out / "metrics.jsonl", "a", encoding="utf-8") if d.main else None
    stop_at = min(tc.max_steps, until) if until is not None else tc.max_steps
    console = Console(tc.max_steps, step, enabled=progress and d.main)

    def log_row(row: dict[str, Any]) -> None:
        history.append(row)
        if metrics_fh is not None:
            metrics_fh.write(json.dumps(row) + "\n")
            metrics_fh.flush()
        if writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, row["step"])
        console.row(row)

    saved_step: int | None = None if restart else step

    def save(step: int, val: float | None, stop: _StopFlag) -> None:
        """One checkpoint, all files or none: staged, then renamed into place together."""
        nonlocal best_val, saved_step
        if val is not None and not math.isfinite(val):  # every rank stops together
            raise MiniGPTError(
                f"the validation loss became {val} at step {step}; lower the learning rate "
                f"({arg('lr')}) or raise {arg('warmup_steps')}. The last good checkpoint was kept.")
        rng = rank_rng_states(d)  # a collective: every rank takes part
        if not d.main:
            return
        improved = val is not None and val < best_val
        stop.saving = True
        if stop.requested:
            console.note(SAVING_NOTE.rstrip())
        try:
            with StagedFiles() as files:
                if improved:
                    checkpoint.save_weights(out / "best.safetensors", model, step, files)
                checkpoint.save_trainer_state(
                    out, model, optimizer, {"step": step, "best_val": val if improved
                                            else best_val}, rank_rng=rng, files=files)
                checkpoint.save_weights(out / "model.safetensors", model, step, files)
                checkpoint.write_config(out, cfg, step, extra, files)
                stop.committing = True
                files.commit()
        finally:
            stop.saving = stop.committing = False
        if improved:
            best_val = val
        saved_step = step
        if stop.abort_after_commit:
            raise KeyboardInterrupt

    t_start = time.perf_counter()
    t_last, step_last = t_start, step
    steps_run = 0
    last_val = float("nan")
    interrupted = None
    model.train()
    try:
        with _StopFlag() as stop:
            while step < stop_at:
                lr = lr_at(step, tc)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                for micro in range(tc.grad_accum):
                    x, y = data.batch("train", step=step, micro=micro, batch_size=tc.batch_size,
                                      block_size=cfg.model.block_size, seed=tc.seed,
                                      mode=tc.batching, rank=d.rank, world=d.world)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    sync = not d.enabled or micro == tc.grad_accum - 1
                    ctx = train_model.no_sync() if not sync else contextlib.nullcontext()
                    with ctx:
                        with autocast(device, amp):
                            _, loss = train_model(x, y)
                        (loss / tc.grad_accum).backward()
                    loss_sum += loss.detach().float()
                if tc.grad_clip > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                else:
                    grad_norm = torch.zeros((), device=device)
                check_now = device.type == "cpu" or (step + 1) % tc.log_interval == 0
                if check_now and not math.isfinite(float(loss_sum)):
                    raise MiniGPTError(
                        f"the training loss became {float(loss_sum / tc.grad_accum)} at step "
                        f"{step + 1}; lower the learning rate ({arg('lr')}) or raise "
                        f"{arg('warmup_steps')}. The last good checkpoint was kept.")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                steps_run += 1
                if step % tc.log_interval == 0 or step == stop_at:
                    now = time.perf_counter()
                    tps = tokens_per_step * (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    train_loss = float(loss_sum) / tc.grad_accum
                    log_row({"step": step, "train_loss": train_loss, "lr": lr,
                             "grad_norm": float(grad_norm), "tokens_per_s": tps,
                             "elapsed": now - t_start})
                console.update(step)
                evaluate = step % tc.eval_interval == 0 or step == tc.max_steps
                stopping = any_rank(d, stop.requested is not None, device)
                if evaluate or step == stop_at or stopping:
                    val = None
                    if evaluate:
                        val = estimate_loss(train_model, data, "val", cfg, device, amp, d)
                        trn = estimate_loss(train_model, data, "train", cfg, device, amp, d)
                        last_val = val
                        log_row({"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50)),
                                 "train_loss_eval": trn, "elapsed": time.perf_counter() - t_start})
                    save(step, val, stop)
                if stopping:
                    interrupted = stop.requested or "a signal on another rank"
                    break
    except KeyboardInterrupt:
        if d.main:
            console.close()
            kept = (f"the checkpoint of step {saved_step} is kept" if saved_step
                    else "no checkpoint was saved yet")
            log(f"stopped at once at step {step}; {kept}.")
        raise
    finally:
        console.close()
        if metrics_fh is not None:
            metrics_fh.close()
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - t_start
    if d.main and interrupted:
        log(f"stopped by {interrupted} at step {step}; the checkpoint is saved in {out}.")
    if d.main and not interrupted and step >= tc.max_steps:
        from .plots import loss_curve

        loss_curve(history, out / "loss.png", title=f"{cfg.model.pos} · {out.name}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    return TrainResult(out=out, step=step, best_val_loss=best_val, final_val_loss=last_val,
                       elapsed=elapsed,
                       tokens_per_s=tokens_per_step * steps_run / max(elapsed, 1e-9),
                       interrupted=bool(interrupted), params=model.num_params(),
                       pos_params=model.pos.num_params(), peak_mem_mb=peak, history=history)


def header(cfg: RunConfig, model: GPT, device: torch.device, amp: torch.dtype | None,
           world: int, tokenizer: str) -> str:
    """One line: vocabulary, parameters (total, positional), device, dtype, tokens per step."""
    tc, L = cfg.train, cfg.model.block_size
    dtype = "bfloat16 autocast" if amp == torch.bfloat16 else "float32"
    procs = f" x {world} processes" if world > 1 else ""
    return (f"vocabulary {cfg.model.vocab_size} ({tokenizer}); {model.num_params():,} "
            f"parameters ({model.pos.num_params():,} positional); device {device}, {dtype}; "
            f"{tc.batch_size * L * tc.grad_accum * world:,} tokens per step ({tc.batch_size} "
            f"x {L} tokens x {tc.grad_accum} accumulation{procs})")


class Console:
    """The console end of the metrics sink. On a terminal: a progress bar, with every
    evaluation printed as a line above it. Elsewhere (a file, CI, nohup): no carriage
    returns, one plain line per logged step and one per evaluation. Disabled: nothing."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True,
                 stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.bar = None
        self.t0, self.step0 = time.perf_counter(), initial
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                            dynamic_ncols=True, file=self.stream)

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def row(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = row["step"]
        if "val_loss" in row:
            self._line(f"step {step}: train loss {row['train_loss_eval']:.4f}, val loss "
                       f"{row['val_loss']:.4f}, val ppl {row['val_ppl']:.2f}")
        elif self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                 tok_s=f"{row['tokens_per_s']:,.0f}")
        else:
            rate = (time.perf_counter() - self.t0) / max(step - self.step0, 1)
            self._line(f"step {step}/{self.total}: loss {row['train_loss']:.4f}, "
                       f"{row['tokens_per_s']:,.0f} tokens/s, ETA "
                       f"{_fmt_eta(rate * (self.total - step))}")

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def note(self, text: str) -> None:
        self._line(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt_eta(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def rank_rng_states(d: Dist) -> list[torch.Tensor] | None:
    """Every rank's CPU RNG state (dropout streams differ per rank), gathered on all ranks."""
    if not d.enabled:
        return None
    mine = torch.get_rng_state()
    states = [torch.empty_like(mine) for _ in range(d.world)]
    dist.all_gather(states, mine)
    return states


def _tensorboard(out: Path, step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
        return None
    return SummaryWriter(log_dir=str(out / "tb"), purge_step=step or None)
