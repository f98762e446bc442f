"""Crash-safe writes (files.py): atomic files and staged directories appear whole or
not at all, with the umask's mode, and a failed write is one sentence that leaves nothing."""

from __future__ import annotations

import os

import pytest

from minigpt.errors import MiniGPTError
from minigpt.files import StagedFiles, atomic_write_bytes, atomic_write_text, staged_dir


def test_atomic_write_failures_are_one_sentence_and_leave_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MiniGPTError, match="cannot write to"):
        atomic_write_text(blocker / "config.json", "{}")  # the parent is a file (even as root)
    target = tmp_path / "model.safetensors"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(MiniGPTError, match=r"failed \(Is a directory\); the previous file"):
        atomic_write_bytes(target, b"new")
    assert (target / "keep").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model.safetensors"]
    good = tmp_path / "ok.json"
    atomic_write_text(good, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert good.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
        raise RuntimeError("crash mid-export")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"x")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_abandoned_staged_save_leaves_the_previous_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    with pytest.raises(KeyboardInterrupt), StagedFiles() as files:
        files.write(a, b"new a")
        files.write(b, b"new b")
        raise KeyboardInterrupt  # a second Ctrl-C before the commit
    assert a.read_text() == "old a" and not b.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary files left
    with StagedFiles() as files:
        files.write(a, b"new a")
        files.write(b, b"new b")
        files.commit()
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


def test_staged_directories_get_the_umask_mode(tmp_path):
    from minigpt.files import staged_dir

    umask = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "d") as tmp:
            fd = os.open(tmp / "private", os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors
            os.close(fd)
        assert (tmp_path / "d" / "private").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
