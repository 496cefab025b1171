"""The compiled decoding step is loaded only from a folder and file of this user's that no one else
can write: another local user must not be able to plant a library that runs inside hangpt."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from hangpt.engine import fast

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="needs a C compiler")


@pytest.fixture
def loaded(monkeypatch, tmp_path):
    """Paths ctypes was asked to load, with the temp folder moved into tmp_path."""
    paths: list[Path] = []
    real = fast.ctypes.CDLL

    def cdll(path, *args, **kw):
        paths.append(Path(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(fast.ctypes, "CDLL", cdll)
    monkeypatch.setattr(fast.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir(mode=0o1777)
    (tmp_path / "tmp").chmod(0o1777)
    fast.library.cache_clear()
    yield paths
    fast.library.cache_clear()


def _private(path: Path) -> bool:
    info = path.lstat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _plant(folder: Path) -> Path:
    """A library under the name hangpt would look for (the real one, standing in for a hostile one)."""
    fast.library.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HANGPT_CACHE", str(folder.parent / "build"))
        lib = fast.library()
    fast.library.cache_clear()
    assert lib is not None
    [built] = (folder.parent / "build").glob("decode_step-*.so")
    folder.mkdir(exist_ok=True)
    return Path(shutil.copy(built, folder / built.name))


def test_new_cache_folder_is_created_private(tmp_path, monkeypatch, loaded):
    monkeypatch.setenv("HANGPT_CACHE", str(tmp_path / "cache"))
    assert fast.library() is not None
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    [path] = loaded
    assert path.parent == tmp_path / "cache" and _private(path)


def test_world_writable_cache_folder_is_never_loaded_from(tmp_path, monkeypatch, loaded):
    shared = tmp_path / "shared"
    planted = _plant(shared)
    shared.chmod(0o777)
    monkeypatch.setenv("HANGPT_CACHE", str(shared))
    assert fast.library() is not None  # built again in a private folder
    assert loaded and all(p != planted and _private(p.parent) and _private(p) for p in loaded)


def test_group_writable_library_file_is_never_loaded(tmp_path, monkeypatch, loaded):
    folder = tmp_path / "cache"
    planted = _plant(folder)
    folder.chmod(0o700)
    planted.chmod(0o775)
    monkeypatch.setenv("HANGPT_CACHE", str(folder))
    fast.library()
    assert planted not in loaded


@pytest.mark.skipif(os.getuid() != 0, reason="handing a file to another user needs root")
def test_library_file_of_another_user_is_never_loaded(tmp_path, monkeypatch, loaded):
    folder = tmp_path / "cache"
    planted = _plant(folder)
    folder.chmod(0o700)
    os.chown(planted, 65534, 65534)
    monkeypatch.setenv("HANGPT_CACHE", str(folder))
    fast.library()
    assert planted not in loaded


@pytest.mark.skipif(os.getuid() != 0, reason="handing a folder to another user needs root")
def test_temp_folder_taken_by_another_user_is_never_loaded_from(tmp_path, monkeypatch, loaded):
    """The fallback in the shared temp folder, created first by someone else: PyTorch is used instead."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HANGPT_CACHE", str(blocker / "cache"))
    theirs = tmp_path / "tmp" / f"hangpt-{os.getuid()}"
    planted = _plant(theirs)
    os.chown(theirs, 65534, 65534)
    fast.library.cache_clear()
    with pytest.warns(UserWarning, match="not private"):
        assert fast.library() is None
    assert planted not in loaded
