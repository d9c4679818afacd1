"""File access shared by core: reading only regular files, and atomic writes that respect the
target (exports, templates, the demo project).

Reading: ``open_regular`` opens without blocking and refuses anything that is not a regular file
(a FIFO named ``x.png`` would otherwise block ``open`` forever, ``/dev/zero`` never ends) and,
with ``max_bytes``, a file larger than its reader can sensibly hold.

Writing: the data goes to a temporary file in the target's folder, is fsync'ed, then
``os.replace``'d over the target, so a full disk or a crash leaves either the old file or the new
one, never half of one. What the target already is decides the rest:

- a symlink is written *through*: the file it points to is replaced and the link stays a link
  (replacing the link itself with a regular file would silently cut whatever the link was for,
  e.g. a shared folder);
- anything that is not a regular file (a device such as ``/dev/full``, a FIFO, a folder) is
  refused: an atomic replace would swap the node for a regular file, and streaming into a
  device cannot be all-or-nothing;
- a read-only file is refused, even for root (its mode says nobody meant it to change);
- a replaced file keeps its permission bits; a new one gets 0666 minus the umask, as any other
  program's output would;
- the temporary name is short and fixed in shape (``.lmk-<pid>-<hex>.tmp``), so a target name
  of up to the file system's limit still works, and temporaries left by a killed writer (dead
  pid, older than ``STALE_TMP_S``) are removed by the next write in that folder.

``atomic_write_many`` writes several files all or nothing as far as a file system allows: every
temporary is written and synced before the first one is moved into place; a failure before that
writes nothing, and a failure during the moves says which files were already written.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from lmk_studio.core.errors import LmkError, display_path

STALE_TMP_S = 600.0  # a temporary this old whose writer is gone is ours to remove
_TMP_RE = re.compile(r"^\.lmk-(\d+)-[0-9a-f]{8}\.tmp$")
_KIND = (
    (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def node_kind(mode: int) -> str:
    """Words for a non-regular file type (for messages)."""
    for test, words in _KIND:
        if test(mode):
            return words
    return "not a regular file"


class FileRefused(LmkError):
    """A path that is not a regular file, or too large to read; ``problem`` without the path."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{display_path(path)}: {problem}")


def open_regular(path: str | Path, max_bytes: int | None = None,
                 what: str = "file") -> tuple[BinaryIO, int]:
    """Open ``path`` for binary reading; (file, size). Never blocks on a FIFO or a device.

    Raises OSError for the usual failures and FileRefused (an LmkError naming the file) for a
    path that is not a regular file or is larger than ``max_bytes``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"is {node_kind(st.st_mode)}, not a regular {what}; only "
                              "regular files are read")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileRefused(path, f"the {what} is {st.st_size / 2**20:.0f} MB, more than the "
                              f"{max_bytes / 2**20:.0f} MB allowed for one {what}; refused "
                              "unread")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f, int(st.st_size)


def read_regular_bytes(path: str | Path, max_bytes: int | None = None,
                       what: str = "file") -> bytes:
    """The whole content of a regular file (see ``open_regular``)."""
    f, _ = open_regular(path, max_bytes, what)
    with f:
        return f.read()


# ---- writing ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        import psutil

        return bool(psutil.pid_exists(pid))
    except Exception:  # noqa: BLE001 - unknown: assume alive, keep the file
        return True


def clean_stale_temps(folder: str | Path, now: float | None = None) -> list[Path]:
    """Remove temporaries of our own pattern left by writers that were killed; returns them.

    Only names ``.lmk-<pid>-<8 hex>.tmp`` are considered, only when that pid is not running
    here and the file is older than STALE_TMP_S (a writer on another machine of a shared folder
    has that long to finish a write that takes milliseconds). Errors are ignored: cleaning is a
    courtesy, never a reason for a write to fail.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m:
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if (not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_TMP_S
                    or _pid_alive(int(m.group(1)))):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def _resolve_target(path: Path, label: str) -> tuple[Path, int | None]:
    """The file to replace (a symlink's target) and the mode to keep (None for a new file)."""
    shown = display_path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    folder = real.parent if str(real.parent) else Path(".")
    if not folder.is_dir():
        via = f" (the link points to {display_path(real)})" if real != path else ""
        raise LmkError(f"{shown}: {label}: folder {display_path(folder)} does not exist{via}")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real, None
    except OSError as e:
        raise LmkError(f"{shown}: {label} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise LmkError(
            f"{shown}: {label}: it is {node_kind(st.st_mode)}, not a regular file; exports only "
            "replace regular files (an atomic replace would swap the node for a plain file). "
            "Nothing was written")
    if not st.st_mode & 0o222 or not os.access(real, os.W_OK):
        raise LmkError(
            f"{shown}: {label}: the file is read-only (mode {stat.S_IMODE(st.st_mode):04o}); "
            "make it writable or choose another name. Nothing was written")
    return real, stat.S_IMODE(st.st_mode)


def _write_temp(real: Path, data: bytes, mode: int | None) -> Path:
    folder = real.parent if str(real.parent) else Path(".")
    for _ in range(16):
        tmp = folder / f".lmk-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)  # the umask applies, as for any program's output
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free temporary name")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                try:
                    os.fchmod(f.fileno(), mode)
                except (AttributeError, OSError):
                    pass
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_many(items: Sequence[tuple[str | Path, bytes, str]]) -> None:
    """Write several (path, data, what) files: all temporaries first, then the moves.

    A failure while preparing (refused target, full disk) writes nothing; a failure during the
    moves (rare: they only rename) names the files already written. Raises LmkError.
    """
    plan: list[tuple[Path, Path, bytes, int | None, str]] = []
    for raw, data, what in items:
        path = Path(raw)
        label = f"cannot write {what}".rstrip()
        real, mode = _resolve_target(path, label)
        plan.append((path, real, data, mode, label))
    temps: list[Path] = []
    try:
        for path, real, data, mode, label in plan:
            clean_stale_temps(real.parent if str(real.parent) else ".")
            try:
                temps.append(_write_temp(real, data, mode))
            except OSError as e:
                raise LmkError(
                    f"{display_path(path)}: {label} ({e.strerror or e}); nothing was written"
                    + ("" if len(plan) == 1 else f" (none of the {len(plan)} files)")) from None
    except BaseException:
        for t in temps:
            _unlink(t)
        raise
    done: list[Path] = []
    for k, ((path, real, _, _, label), tmp) in enumerate(zip(plan, temps, strict=True)):
        try:
            os.replace(tmp, real)
        except OSError as e:
            for t in temps[k:]:
                _unlink(t)
            written = (f"; already written: {', '.join(display_path(p) for p in done)}"
                       if done else "")
            raise LmkError(f"{display_path(path)}: {label} ({e.strerror or e}); the previous "
                           f"file, if any, is unchanged{written}") from None
        done.append(path)


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "") -> None:
    """Write `data` to `path` all or nothing; LmkError names the file (and `what` it holds)."""
    atomic_write_many([(path, data, what)])


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8",
                      what: str = "") -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode(encoding), what)
