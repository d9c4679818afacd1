"""core.fileio: reading only regular files, and atomic writes that respect the target."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from lmk_studio.core import fileio
from lmk_studio.core.errors import LmkError


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_open_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(LmkError, match=r"x\.png: is a FIFO"):
        fileio.open_regular(fifo)
    assert time.monotonic() - t0 < 2.0


def test_open_regular_refuses_a_folder_and_a_file_over_the_cap(tmp_path: Path) -> None:
    with pytest.raises((LmkError, OSError)):
        fileio.open_regular(tmp_path)
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * 3000)
    with pytest.raises(LmkError, match="big.json"):
        fileio.open_regular(big, max_bytes=1000)
    f, size = fileio.open_regular(big, max_bytes=4000)
    with f:
        assert size == 3000 and len(f.read()) == 3000


def test_new_file_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fileio.atomic_write_text(tmp_path / "a.csv", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.csv") == 0o644


def test_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("old")
    os.chmod(p, 0o640)
    fileio.atomic_write_text(p, "new")
    assert p.read_text() == "new" and _mode(p) == 0o640


def test_read_only_target_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("old")
    os.chmod(p, 0o444)
    with pytest.raises(LmkError, match="read-only"):
        fileio.atomic_write_text(p, "new")
    assert p.read_text() == "old"


def test_symlink_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real" / "out.csv"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    fileio.atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "target.csv")
    fileio.atomic_write_text(link, "new")
    assert link.is_symlink() and (tmp_path / "target.csv").read_text() == "new"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_device_target_is_refused_and_left_alone() -> None:
    with pytest.raises(LmkError, match="character device"):
        fileio.atomic_write_text("/dev/full", "x")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_long_file_name_works(tmp_path: Path) -> None:
    name = "n" * 246 + ".csv"  # 250 characters: within the usual 255-byte limit
    fileio.atomic_write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".lmk-999999-0123abcd.tmp"  # pid 999999 is beyond the default pid_max
    dead.write_text("half")
    old = time.time() - 2 * fileio.STALE_TMP_S
    os.utime(dead, (old, old))
    fresh = tmp_path / ".lmk-999999-fedc4321.tmp"  # too young: a writer elsewhere may own it
    fresh.write_text("half")
    mine = tmp_path / f".lmk-{os.getpid()}-00000000.tmp"  # a live writer's
    mine.write_text("half")
    os.utime(mine, (old, old))
    other = tmp_path / ".other.tmp"  # not our pattern
    other.write_text("x")
    os.utime(other, (old, old))
    fileio.atomic_write_text(tmp_path / "out.csv", "x")
    assert not dead.exists() and fresh.exists() and mine.exists() and other.exists()


def test_many_writes_nothing_when_one_fails(tmp_path: Path, monkeypatch) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.json"
    a.write_text("old a")
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(LmkError, match="nothing was written"):
        fileio.atomic_write_many([(a, b"new a", "CSV"), (b, b"new b", "JSON")])
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_display_path_shows_undecodable_bytes() -> None:
    raw = os.fsdecode(b"caf\xe9.png")
    assert fileio.display_path(raw) == "caf\\xe9.png"
    assert fileio.display_path("ok.png") == "ok.png"
