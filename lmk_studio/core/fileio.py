"""Atomic file writes shared by every writer in core (exports, templates, the demo project).

A temp file in the target's folder, fsync'ed, then os.replace'd over the target: a full disk or a
crash leaves either the old file or the new one, never half of one, and no temp file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lmk_studio.core.errors import LmkError


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "") -> None:
    """Write `data` to `path` all or nothing; LmkError names the file (and `what` it holds)."""
    path = Path(path)
    label = f"cannot write {what}".rstrip()
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise LmkError(f"{path}: {label}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise LmkError(f"{path}: {label} ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise LmkError(
            f"{path}: {label} ({e.strerror or e}); the previous file, if any, is unchanged"
        ) from None


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8",
                      what: str = "") -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode(encoding), what)
