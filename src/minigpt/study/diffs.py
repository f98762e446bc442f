"""Settings that differ, named: between two studies' settings and between two run configs."""

from __future__ import annotations

from typing import Any

from ..config import RunConfig

# Settings that may differ between invocations without making it another study.
NOT_FINGERPRINTED = {"device", "compile"}


def diff_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'name: old -> new' for every setting that differs between two settings dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_settings(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old == new:
        return []
    name = prefix.rstrip(".") or "settings"
    return [f"{name.removeprefix('config.')}: {_show(old)} -> {_show(new)}"]


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) if len(v) <= 8 else f"{len(v)} items"
    return "unset" if v is None else str(v)


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Config fields (section.name: old -> new) that differ, ignoring those that need not
    match."""
    da, db = a.to_dict(), b.to_dict()
    for settings in (da, db):
        for k in NOT_FINGERPRINTED:
            settings["train"].pop(k, None)
    return diff_settings(da, db)
