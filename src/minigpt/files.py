"""Crash-safe file writing: write to a temporary file beside the target, fsync, rename.

A reader (or a process started after a crash, even SIGKILL or a power cut) sees either the
old file or the new one, never a mix. Temporary files are named `.{name}.*.tmp`, so a crash
can leave at most such a file behind; `remove_stale_temps` clears them on resume.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MiniGPTError


def _read_umask() -> int:
    """The process umask, read once (Linux shows it in /proc; elsewhere set and restore it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (the directory entry itself); best effort on odd filesystems."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> str:
    """`data` in a synced temporary file beside `path`, with the umask's usual mode."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise MiniGPTError(f"cannot write to {path.parent}: {e.strerror}.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; use the usual mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:  # also a Ctrl-C that abandons the write
        _unlink(tmp)
        if isinstance(e, OSError):
            raise MiniGPTError(f"writing {path} failed ({e.strerror}); the previous file is "
                               "untouched.") from None
        raise
    return tmp


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _replace(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise MiniGPTError(f"writing {path} failed ({e.strerror}); the previous file is untouched."
                           ) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    _replace(_write_temp(path, data), path)
    _fsync_dir(path.parent)


class StagedFiles:
    """Files that must change together (a checkpoint): `write` puts each in a synced temporary
    file now, `commit` renames them into place in the order written. Leaving the with-block
    by an exception before `commit` (a Ctrl-C that abandons the save) deletes the temporaries
    and leaves the previous files as they were."""

    def __init__(self) -> None:
        self._files: list[tuple[str, Path]] = []

    def write(self, path: str | Path, data: bytes) -> None:
        path = Path(path)
        self._files.append((_write_temp(path, data), path))

    def commit(self) -> None:
        files, self._files = self._files, []
        for i, (tmp, path) in enumerate(files):
            try:
                _replace(tmp, path)
            except MiniGPTError:
                for t, _ in files[i + 1:]:
                    _unlink(t)
                raise
        for directory in {path.parent for _, path in files}:
            _fsync_dir(directory)

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        for tmp, _ in self._files:
            _unlink(tmp)
        self._files = []


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """`fig.savefig` through `atomic_write_bytes` (format taken from the suffix)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return path


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the `.{name}.*.tmp` files a crash left in `directory`; return what was removed.

    Only call this where no other process is writing into `directory` (e.g. on resume).
    """
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


@contextmanager
def staged_dir(out: str | Path, last: tuple[str, ...] = ("config.json",)) -> Iterator[Path]:
    """Write a whole directory into a temporary sibling, then move it into place.

    Yields the temporary directory. On success it is renamed to `out` in one step when
    `out` is missing or empty; otherwise its files are moved in one by one (each atomically),
    the names in `last` at the end, so a crash never leaves a complete-looking but partial
    directory. On failure the temporary directory is removed and `out` is untouched.
    """
    out = Path(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise MiniGPTError(f"cannot create {out}: {e.strerror}.") from None
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                os.chmod(p, 0o666 & ~_UMASK)  # some writers (safetensors) make files 0600
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        try:
            os.replace(tmp, out)  # atomic when out is missing or an empty directory
        except OSError:
            if not out.is_dir():
                raise
            names = sorted(p.name for p in tmp.iterdir())
            names = [n for n in names if n not in last] + [n for n in last if n in names]
            for n in names:
                os.replace(tmp / n, out / n)
        _fsync_dir(parent)
    except OSError as e:
        raise MiniGPTError(f"writing {out} failed ({e.strerror or e}).") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | Path, what: str = "file",
              error: type[MiniGPTError] = MiniGPTError) -> Any:
    """Parse a JSON file; a missing or unreadable one is `error` with one sentence."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise error(f"{what} {p} is not readable JSON.") from None


@contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold an advisory lock on the file `path` (created if missing) for the block; if another
    process holds it, MiniGPTError(busy) at once. The lock goes with the process, so a killed
    holder never leaves a stale one. Where the OS has no flock (Windows) it is not taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MiniGPTError(busy) from None
        yield
