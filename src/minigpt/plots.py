"""Small matplotlib helpers shared by training, compare and viz (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_savefig  # noqa: E402


def loss_curve(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Train and validation loss against step, from metrics rows."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tr = [(r["step"], r["train_loss"]) for r in history if "train_loss" in r]
    va = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if tr:
        ax.plot(*zip(*tr), label="train (batch)", alpha=0.7)
    if va:
        ax.plot(*zip(*va), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(f"Loss curve {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path, dpi=110)


def save(fig: Any, path: Path, dpi: int = 100, *, tight: bool = True) -> Path:
    """Lay out (unless the figure placed its parts itself), write atomically (a crash never
    leaves half a PNG) and free a figure, also when writing fails."""
    try:
        if tight:
            fig.tight_layout()
        atomic_savefig(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
