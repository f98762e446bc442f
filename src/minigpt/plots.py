"""Small matplotlib helpers shared by training, compare and viz (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .files import atomic_savefig  # noqa: E402


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
    legend_outside(ax)
    return save(fig, path, dpi=110)


def legend_outside(ax: Any, **kw: Any) -> Any:
    """The axes' legend to the right of the axes, top-aligned, so it can never hide data
    (the figure's layout, tight or constrained, makes room for it)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def points_under_legend(fig: Any) -> int:
    """How many plotted points (line vertices, filled-area vertices, scatter points) of any
    of the figure's axes lie inside a legend's box as drawn, plus one for each image axes a
    legend overlaps: 0 when no legend hides data. For tests of every plot the project draws."""
    import numpy as np

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_legend().get_window_extent(renderer) for ax in fig.axes
             if ax.get_legend() is not None]
    pts, images = [], []
    for ax in fig.axes:
        pts += [line.get_transform().transform(line.get_xydata()) for line in ax.get_lines()]
        for coll in ax.collections:
            t = coll.get_transform()
            pts += [t.transform(p.vertices) for p in coll.get_paths()]
            offsets = coll.get_offsets()
            if len(offsets):
                pts.append(coll.get_offset_transform().transform(offsets))
        if ax.get_images():
            images.append(ax.get_window_extent(renderer))
    covered = 0
    for box in boxes:
        for xy in pts:
            xy = np.asarray(xy, dtype=float).reshape(-1, 2)
            covered += int(((xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1)
                            & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)).sum())
        covered += sum(box.overlaps(im) for im in images)
    return covered


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
