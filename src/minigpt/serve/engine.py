"""The playground's engine, free of any web framework: the loaded models, generations that
take turns on the CPU token by token, attention maps and the encoding's pictures.

Concurrency: every generation steps a `generation.Decoding` in its own thread, but only one
thread computes at a time. After each token a generation hands the turn to the next one
waiting (first come, first served), so N concurrent requests interleave token by token
(round robin) instead of queueing behind each other; nothing is batched. A generation alone
never waits. Cancelling (stop button, closed tab) ends the loop after its next token
(`Cancelled`), which ends the thread and frees its key/value cache.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import math
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SAMPLE_ONLY_SETTINGS, WEIGHT_SETTINGS, SamplingSettings, sampling_settings
from ..errors import MiniGPTError

TOP_K_SHOWN = 5  # alternatives shown on hover
ATTENTION_MAX_TOKENS = 256  # the attention view looks at (at most) the last this many tokens


@dataclass
class Limits:
    """What one request may ask for (documented in docs/serve.md)."""

    max_prompt_chars: int = 2000
    max_new_tokens: int = 500
    max_jobs: int = 32  # generations at once; more are refused with a 'busy' message


@dataclass
class Entry:
    """One loaded checkpoint and how the page labels it."""

    name: str
    path: Path
    model: Any
    tok: Any
    pos: str
    step: int | None
    val_loss: float | None
    which: str
    _texts: dict[int, str] = field(default_factory=dict, repr=False)

    def token_text(self, i: int) -> str:
        """One token's own text (cached: the hover alternatives ask for it every step)."""
        text = self._texts.get(i)
        if text is None:
            text = self._texts[i] = self.tok.decode([i])
        return text

    def info(self) -> dict[str, Any]:
        c = self.model.cfg
        return {"name": self.name, "pos": self.pos, "step": self.step, "val_loss": self.val_loss,
                "block_size": c.block_size, "extrapolates": bool(self.model.pos.extrapolates),
                "n_layer": c.n_layer, "n_head": c.n_head, "d_model": c.d_model,
                "params": self.model.num_params(), "vocab_size": c.vocab_size,
                "tokenizer": self.tok.kind, "description": self.model.pos.description}


def find_runs(study: str | Path) -> list[Path]:
    """The run directories of a `minigpt compare` output, in name order."""
    study_dir = Path(study)
    if not study_dir.is_dir():
        raise MiniGPTError(f"study directory {study_dir} does not exist.")
    runs = sorted(p.parent for p in (study_dir / "runs").glob("*/config.json"))
    if not runs:
        raise MiniGPTError(f"{study_dir} holds no runs (no runs/*/config.json); give the --out "
                           "directory of a `minigpt compare` study.")
    return runs


def load_entries(ckpts: list[str | Path], which: str = "last") -> list[Entry]:
    """Load every checkpoint directory (bad ones are refused before the server starts)."""
    from ..checkpoint import load
    from ..metrics import read_metrics

    entries: list[Entry] = []
    names: set[str] = set()
    for ckpt in ckpts:
        ckpt_dir = Path(ckpt)
        model, tok, cfg, raw = load(ckpt_dir, which=which)
        name = base = ckpt_dir.name or ckpt_dir.resolve().name or "model"
        n = 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        vals = [float(r["val_loss"]) for r in read_metrics(ckpt_dir / "metrics.jsonl")
                if isinstance(r.get("val_loss"), (int, float))]
        if which == "best":
            finite = [v for v in vals if math.isfinite(v)]
            val = min(finite) if finite else None
        else:
            val = vals[-1] if vals and math.isfinite(vals[-1]) else None
        step = raw.get("step") if isinstance(raw.get("step"), int) else None
        entries.append(Entry(name, ckpt_dir, model, tok, cfg.model.pos, step, val, which))
    return entries


class Cancelled(Exception):
    """Raised between two tokens to stop a generation."""


class Turnstile:
    """One thread computes at a time; `pass_turn` lets every waiting thread go first (FIFO)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self._busy = False

    def enter(self) -> None:
        me = object()
        with self._cv:
            self._waiting.append(me)
            while self._busy or self._waiting[0] is not me:
                self._cv.wait()
            self._waiting.popleft()
            self._busy = True

    def leave(self) -> None:
        with self._cv:
            self._busy = False
            self._cv.notify_all()

    def pass_turn(self) -> None:
        if self._waiting:  # an unlocked peek: at worst one more token before handing over
            self.leave()
            self.enter()

    def __enter__(self) -> Turnstile:
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()


# the sampling settings a request may give: every SamplingSettings field but the weights,
# which the server chooses once per model (`minigpt serve --dtype/--quantize`)
REQUEST_SETTINGS = tuple(f.name for f in dataclasses.fields(SamplingSettings)
                         if f.name not in (*WEIGHT_SETTINGS, *SAMPLE_ONLY_SETTINGS))


@dataclass
class Request:
    """A checked generation request (the knobs and semantics of `minigpt sample`)."""

    model: str
    prompt: str
    settings: SamplingSettings = field(default_factory=SamplingSettings)


@dataclass
class Stats:
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    active: int = 0
    tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {k: getattr(self, k) for k in
                    ("started", "finished", "cancelled", "failed", "active", "tokens")}


class Engine:
    """The models and everything the pages ask of them."""

    def __init__(self, entries: list[Entry], limits: Limits | None = None,
                 settings: SamplingSettings | None = None) -> None:
        if not entries:
            raise MiniGPTError("give at least one checkpoint: --ckpt DIR or --study DIR.")
        self.entries = {e.name: e for e in entries}
        self.limits = limits or Limits()
        self.settings = settings or SamplingSettings()  # what a request leaves out
        self.turnstile = Turnstile()
        self.stats = Stats()
        self._viz_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe
        self._viz: dict[str, tuple[Path, list[str], str]] = {}
        self._viz_dir: tempfile.TemporaryDirectory | None = None
        self.jobs: set[Generation] = set()  # running generations (under stats.lock)
        self.closing = False

    def stop_all(self) -> None:
        """Cancel every generation (the server is shutting down); each ends its stream."""
        self.closing = True
        with self.stats.lock:
            jobs = list(self.jobs)
        for job in jobs:
            job.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Stop and join every generation thread, then delete the pictures drawn."""
        self.stop_all()
        with self.stats.lock:
            jobs = list(self.jobs)
        for job in jobs:  # no torch work may outlive the interpreter
            job.thread.join(timeout)
        if self._viz_dir is not None:
            self._viz_dir.cleanup()

    def entry(self, name: Any) -> Entry:
        if not isinstance(name, str) or name not in self.entries:
            raise UnknownModel(f"unknown model {name!r}; this server has "
                               f"{', '.join(self.entries)}.")
        return self.entries[name]

    # --- requests ----------------------------------------------------------------------

    def parse_request(self, body: Any) -> Request:
        """A JSON body -> a Request, or a MiniGPTError saying what is wrong with its fields
        (the sampling settings themselves are checked by `start`, as `generate` does)."""
        if not isinstance(body, dict):
            raise MiniGPTError("the request must be a JSON object.")
        unknown = sorted(set(body) - {"model", "prompt", *REQUEST_SETTINGS})
        if unknown:
            raise MiniGPTError(f"unknown field(s) {', '.join(unknown)}; a request has model, "
                               f"prompt, {', '.join(REQUEST_SETTINGS)}.")
        self.entry(body.get("model"))
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise MiniGPTError("prompt must be text.")
        cap = self.limits.max_prompt_chars
        if len(prompt) > cap:
            raise MiniGPTError(f"the prompt is {len(prompt)} characters; this server takes at "
                               f"most {cap} (--max-prompt-chars).")
        given = {k: None if body[k] == "" else body[k]  # an emptied box: the default
                 for k in REQUEST_SETTINGS if k in body}
        settings = sampling_settings(given, self.settings)
        if settings.max_new_tokens > self.limits.max_new_tokens:
            raise MiniGPTError(f"max new tokens is {settings.max_new_tokens}; this server allows "
                               f"at most {self.limits.max_new_tokens} (--max-new-tokens).")
        return Request(model=body["model"], prompt=prompt, settings=settings)

    def start(self, req: Request, emit: Callable[[dict[str, Any]], None]) -> Generation:
        """Start a generation thread; `emit` receives its events (called from that thread).
        A request the model cannot serve (bad settings, a prompt the tokenizer cannot
        encode) is refused here, before any event."""
        import torch

        from ..generation import Decoding, prompt_ids

        e = self.entry(req.model)
        ids = prompt_ids(e.tok, req.prompt)
        x = torch.tensor([ids], dtype=torch.long)  # (1, T)
        with self.turnstile:  # may build the sampling weights: not while a thread computes
            steps = Decoding(e.model, x, settings=req.settings,
                             generator=torch.Generator().manual_seed(req.settings.seed))
        with self.stats.lock:
            if self.stats.active >= self.limits.max_jobs:
                raise Busy(f"the server is busy with {self.stats.active} generations (at most "
                           f"{self.limits.max_jobs}, --max-jobs); try again in a moment.")
            if self.closing:
                raise Busy("the server is shutting down.")
            self.stats.active += 1
            self.stats.started += 1
            job = Generation(self, e, req, ids, steps, emit)
            self.jobs.add(job)
        job.thread.start()
        return job

    # --- attention -----------------------------------------------------------------------

    def attention(self, body: Any) -> dict[str, Any]:
        """{model, ids} -> every layer's and head's attention weights on those tokens.

        Looks at the last ATTENTION_MAX_TOKENS ids, and for an encoding that cannot go past
        its trained length L (learned) at the last L, which is all it sees when generating.
        Weights are sent as base64 uint8 (weight x 255), shape (n_layer, n_head, T, T).
        """
        import torch
        if not isinstance(body, dict):
            raise MiniGPTError("the request must be a JSON object.")
        e = self.entry(body.get("model"))
        ids = body.get("ids")
        V = e.model.cfg.vocab_size
        if not (isinstance(ids, list) and ids and all(type(i) is int and 0 <= i < V
                                                      for i in ids)):
            raise MiniGPTError(f"ids must be a non-empty list of token ids below {V}.")
        L = e.model.cfg.block_size
        keep = ATTENTION_MAX_TOKENS if e.model.pos.extrapolates else min(L, ATTENTION_MAX_TOKENS)
        start = max(0, len(ids) - keep)
        window = ids[start:]
        x = torch.tensor([window], dtype=torch.long)  # (1, T)
        with self.turnstile:
            maps = e.model.attention_maps(x)  # n_layer x (1, nh, T, T)
        att = torch.stack([m[0].float() for m in maps])  # (n_layer, nh, T, T)
        q = (att.clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()
        return {"model": e.name, "offset": start, "T": len(window), "L": L,
                "n_layer": att.shape[0], "n_head": att.shape[1],
                "tokens": [e.token_text(i) for i in window],
                "weights": base64.b64encode(q.tobytes()).decode("ascii")}

    # --- the encoding's pictures -------------------------------------------------------------

    def viz(self, name: Any) -> tuple[Path, list[str], str]:
        """Draw (once) the checkpoint's encoding with `minigpt viz`'s code -> (dir, PNGs, note)."""
        from ..viz import draw

        e = self.entry(name)
        with self._viz_lock:
            if e.name not in self._viz:
                if self._viz_dir is None:
                    self._viz_dir = tempfile.TemporaryDirectory(prefix="minigpt-serve-")
                out = Path(self._viz_dir.name) / e.name
                notes: list[str] = []
                paths = draw(None, e.path, out, which=e.which, log=notes.append,
                             attention_hint="generate some text, then open the Attention tab "
                                            "to see the attention it leads to")
                self._viz[e.name] = (out, [p.name for p in paths], " ".join(notes))
            return self._viz[e.name]


class Busy(MiniGPTError):
    """Too many generations at once."""


class UnknownModel(MiniGPTError):
    """A model name this server does not serve."""


class Generation:
    """One request's generation thread and the events it emits.

    Events: {"type": "start", prompt tokens, L, ...}; {"type": "token", "id", "text", "p",
    "top": [[id, text, p], ...]} per token; then {"type": "done", "tokens", "seconds"} or
    {"type": "error", "message"}. A cancelled generation emits nothing more.
    """

    def __init__(self, engine: Engine, entry: Entry, req: Request, ids: list[int],
                 steps: Any, emit: Callable[[dict[str, Any]], None]) -> None:
        self.engine, self.entry, self.req, self.ids, self.emit = engine, entry, req, ids, emit
        self.steps = steps  # a generation.Decoding, not started
        self.cancelled = threading.Event()
        self.n = 0
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"minigpt-generate-{entry.name}")

    def cancel(self) -> None:
        self.cancelled.set()

    def _run(self) -> None:
        import time

        eng = self.engine
        outcome = "failed"
        try:
            self.emit(self._start_event())
            t0 = time.perf_counter()
            with eng.turnstile:
                if self.cancelled.is_set():
                    raise Cancelled
                self._decode()
            self.emit({"type": "done", "tokens": self.n,
                       "seconds": round(time.perf_counter() - t0, 4)})
            outcome = "finished"
        except Cancelled:
            outcome = "cancelled"
            if eng.closing:  # a closed tab reads nothing more; a shutdown ends the stream
                self.emit({"type": "error", "message": "the server is shutting down."})
        except MiniGPTError as err:
            self.emit({"type": "error", "message": str(err)})
        except Exception as err:  # a bug: say so in the page, keep the server running
            self.emit({"type": "error", "message": f"generation failed ({err.__class__.__name__}:"
                                                   f" {err})."})
        finally:
            with eng.stats.lock:
                eng.jobs.discard(self)
            eng.stats.add(active=-1, tokens=self.n, **{outcome: 1})

    def _start_event(self) -> dict[str, Any]:
        from ..generation import prompt_note

        e = self.entry
        return {"type": "start", "model": e.name, "L": e.model.cfg.block_size,
                "extrapolates": bool(e.model.pos.extrapolates),
                "prompt": [[i, e.token_text(i)] for i in self.ids],
                "prompt_text": self.req.prompt,
                "note": prompt_note(e.model, len(self.ids)) or ""}  # as `minigpt sample` warns

    def _decode(self) -> None:
        """Emit a token event per step, handing the turn on after each (holds the turn)."""
        from ..generation import TextStream

        e = self.entry
        stream = TextStream(e.tok, self.ids)
        for nxt, logits in self.steps:
            i = int(nxt[0, 0])
            probs = logits[0].float().softmax(-1)  # (V,) the model's own distribution
            top = probs.topk(min(TOP_K_SHOWN, probs.numel()))
            self.emit({"type": "token", "id": i, "text": stream.push(i),
                       "p": round(probs[i].item(), 5),
                       "top": [[j, e.token_text(j), round(p, 5)] for j, p in
                               zip(top.indices.tolist(), top.values.tolist())]})
            self.n += 1
            if self.cancelled.is_set():
                raise Cancelled
            self.engine.turnstile.pass_turn()
