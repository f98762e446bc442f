"""A run's metrics: the one sink that training feeds (metrics.jsonl, TensorBoard, the console)
and the one reader of metrics.jsonl.

Every row is a dict with a `step`; the training rows carry `train_loss`, `lr`, `grad_norm`,
`tokens_per_s` and `elapsed`, the evaluation rows `val_loss`, `val_ppl` and
`train_loss_eval`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .files import atomic_write_text

Row = dict[str, Any]


def read_metrics(path: Path) -> list[Row]:
    """The rows of a metrics.jsonl (none if it is missing); a line cut short by a crash is
    skipped."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def truncate_metrics(path: Path, step: int) -> list[Row]:
    """Keep the rows up to `step` (a resume replays what came after) and return them."""
    if not path.exists():
        return []
    rows = [row for row in read_metrics(path) if row.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


class MetricsSink:
    """Where every row goes: the run's history, and on the main process metrics.jsonl,
    TensorBoard (when installed) and the console. `main` is False on the other ranks."""

    def __init__(self, out: Path, step: int, total: int, history: list[Row], *,
                 main: bool, progress: bool) -> None:
        self.history = history
        self.writer = _tensorboard(out, step) if main else None  # slow: before the file,
        # whose appearance tells a watcher (and the tests) that the loop is about to start
        self.file = (out / "metrics.jsonl").open("a", encoding="utf-8") if main else None
        self.console = Console(total, step, enabled=progress and main)

    def log(self, row: Row) -> None:
        self.history.append(row)
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, row["step"])
        self.console.row(row)

    def close(self) -> None:
        self.console.close()
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tensorboard(out: Path, step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
        return None
    return SummaryWriter(log_dir=str(out / "tb"), purge_step=step or None)


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

    def row(self, row: Row) -> None:
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
