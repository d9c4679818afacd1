"""The project store: one SQLite file per project (stdlib sqlite3, WAL journal).

Why this shape:
- Every public edit is ONE explicit transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rollback on
  any error), so killing the process at any instant loses at most the edit in flight.
- ``synchronous=FULL``: in WAL mode NORMAL is already safe against a killed *process*, but a
  power cut or OS crash may then roll back the last few commits. A clinician's click is worth an
  fsync of the WAL per commit; batch writes (engine results, imports) are one commit. Measured on
  the contended 2-core dev VM: set_point median 5.9 ms (p95 12 ms) with FULL, 0.03 ms with NORMAL.
- A file we cannot vouch for (missing, not SQLite, corrupt, another program's database, a newer
  schema) is inspected through a *read-only* connection first and refused with a ProjectError
  naming the file and the problem; it is never written to. Older schemas are upgraded after a
  backup copy ``<file>.schema-v<N>.bak`` is written next to it.
- The GUI and a training process may have the same project open: WAL lets readers run while one
  writer commits, ``busy_timeout`` waits for the other writer, transactions stay short (image
  metadata is read before the transaction opens).
- Image paths are stored relative to the project's folder (POSIX separators, ``..`` allowed)
  *and* absolute; the relative one wins when it resolves, so a folder tree moved together with
  its images keeps working, and a project file moved alone still finds them by the absolute one.
  Size + mtime + ``core.images.quick_hash`` notice moved or changed files on open.

Coordinates are float pixels with the origin at the *centre* of the top-left pixel (pixel (i, j)
covers x in [j - 0.5, j + 0.5]), as in ``core.points``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmk_studio import __version__
from lmk_studio.core.errors import ImageLoadError, LmkError, ProjectError
from lmk_studio.core.fileio import display_path
from lmk_studio.core.points import LandmarkPoint, Source, Status

if TYPE_CHECKING:  # core.templates is imported lazily at run time (see _template_cls)
    from lmk_studio.core.templates import Template

SCHEMA_VERSION = 2
APPLICATION_ID = 0x4C4D4B53  # "LMKS" in the SQLite header: marks the file as ours
FORMAT_MARK = "lmk_studio project"
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 10_000
RUN_STATUSES = ("running", "finished", "cancelled", "failed")
CALIBRATION_SOURCE = "calibration (user)"
_META_PREFIX = "lmk:"  # reserved meta keys used by the store itself
_READ_ONLY = "the project file or its folder is read-only"
_STATUS = {s.value: s for s in Status}
_SOURCE = {s.value: s for s in Source}

# MIGRATIONS[v] upgrades a schema v-1 file to v. A new project runs all of them in order, so the
# upgrade path is exercised by every create() as well as by old files.
#   v1: first layout: meta, template, images, current points, model runs.
#   v2: per-point expected error, per-image calibration, per-run prediction history.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE template (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL)",
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL,
            abs_path TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            hash TEXT NOT NULL,
            size INTEGER,
            mtime_ns INTEGER,
            spacing_row REAL,
            spacing_col REAL,
            spacing_source TEXT,
            added TEXT NOT NULL)""",
        """CREATE TABLE points (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            x REAL,
            y REAL,
            status TEXT NOT NULL,
            source TEXT,
            confidence REAL,
            run_id INTEGER,
            updated TEXT NOT NULL,
            PRIMARY KEY (image_id, idx)) WITHOUT ROWID""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            config TEXT NOT NULL DEFAULT '{}',
            metrics TEXT NOT NULL DEFAULT '{}',
            checkpoints TEXT NOT NULL DEFAULT '{}',
            timings TEXT NOT NULL DEFAULT '{}',
            started TEXT NOT NULL,
            finished TEXT)""",
    ),
    2: (
        "ALTER TABLE points ADD COLUMN expected_error_px REAL",
        "ALTER TABLE images ADD COLUMN calibration_row REAL",
        "ALTER TABLE images ADD COLUMN calibration_col REAL",
        """CREATE TABLE predictions (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            x REAL,
            y REAL,
            confidence REAL,
            expected_error_px REAL,
            status TEXT NOT NULL,
            source TEXT,
            PRIMARY KEY (run_id, image_id, idx)) WITHOUT ROWID""",
        "CREATE INDEX predictions_image ON predictions (image_id)",
    ),
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


@dataclass(frozen=True)
class ImageRecord:
    """One image of the project as the user sees it now (file state checked on open)."""

    id: int
    path: Path
    name: str
    width: int
    height: int
    hash: str
    spacing: tuple[float, float] | None
    spacing_source: str | None
    missing: bool = False
    changed: bool = False


@dataclass(frozen=True)
class RunRecord:
    """One model run (classical preview, Stage I/II training or prediction)."""

    id: int
    kind: str
    status: str
    config: dict
    metrics: dict
    checkpoints: dict
    timings: dict
    started: str
    finished: str | None


# ----------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_default(o: Any) -> Any:
    """Make configs/metrics with Paths, numpy scalars/arrays, sets or enums storable."""
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    if isinstance(o, Status | Source):
        return o.value
    for attr in ("tolist", "item"):  # numpy arrays / scalars, torch scalars
        f = getattr(o, attr, None)
        if callable(f):
            return f()
    return str(o)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _template_cls():
    from lmk_studio.core.templates import Template

    return Template


def _describe_sqlite_error(exc: sqlite3.Error) -> str:
    """Plain words for the errors a user can meet (full disk, read-only place, lock)."""
    msg = str(exc)
    low = msg.lower()
    if "disk is full" in low or "database or disk is full" in low:
        return "the disk is full"
    if "readonly" in low or "read-only" in low:
        return _READ_ONLY
    if "locked" in low or "busy" in low:
        return (f"another program kept the project locked for more than "
                f"{BUSY_TIMEOUT_MS // 1000} s")
    if "disk i/o error" in low:
        return "a disk input/output error (is the drive still connected?)"
    if "malformed" in low or "not a database" in low:
        return f"the file is corrupt ({msg})"
    return msg


def _check_finite(path: Path, what: str, v: float | None) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ProjectError(f"{path}: {what} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ProjectError(f"{path}: {what} must be a finite number, got {v!r}")
    return f


# ---- validation of what is read back ---------------------------------------------------------
# A project file may come from a colleague, a server or a disk that went wrong; SQLite keeps any
# value in any column. Every value is checked as it is read and a bad one is a ProjectError
# naming the file, the table and row, and the value, instead of a traceback somewhere later.
_NUM = (int, float)


class _Bad(Exception):
    """A value read from the project is not what its column means (internal; see _v)."""

    def __init__(self, where: str, value: Any, expected: str) -> None:
        self.where, self.value, self.expected = where, value, expected


def _int(where: str, v: Any, lo: int | None = None, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if type(v) is not int or (lo is not None and v < lo):
        raise _Bad(where, v, "a whole number" + (f" >= {lo}" if lo is not None else ""))
    return v


def _float(where: str, v: Any, positive: bool = False, optional: bool = True) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, _NUM) or not math.isfinite(float(v)) \
            or (positive and v <= 0):
        raise _Bad(where, v, "a positive finite number" if positive else "a finite number")
    return float(v)


def _text(where: str, v: Any, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise _Bad(where, v, "text")
    return v


def _json(where: str, v: Any, kind: type | tuple[type, ...] = dict) -> Any:
    try:
        out = json.loads(v)
    except (TypeError, ValueError, RecursionError):
        raise _Bad(where, v, "valid JSON") from None
    if not isinstance(out, kind):
        raise _Bad(where, v, "a JSON object" if kind is dict else "valid JSON")
    return out


def _spacing_pair(where: str, v: Any) -> tuple[float, float] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 2:
        raise _Bad(where, v, "[row, col] mm per pixel")
    r, c = (_float(where, x, positive=True, optional=False) for x in v)
    assert r is not None and c is not None
    return r, c


# ---- run owners -----------------------------------------------------------------------------
_RUN_OWNER = _META_PREFIX + "run_owner:"  # + run id -> {"pid", "host", "created"}


def _create_time(pid: int | None = None) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - without it the pid alone identifies the process
        return None


def _this_process() -> dict[str, Any]:
    """Who owns a run: this process, and, for an engine job child (multiprocessing), the
    parent that runs it: that parent closes the runs of a child that dies, with the better
    message (how it died, the log's last lines), so ``_owner_gone`` leaves them to it."""
    import multiprocessing
    import socket

    owner: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                             "created": _create_time()}
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        owner["parent"] = {"pid": parent.pid, "created": _create_time(parent.pid)}
    return owner


def _json_or_none(v: Any) -> Any:
    try:
        return json.loads(v)
    except (TypeError, ValueError, RecursionError):
        return None


def _alive(pid: Any, created: Any) -> bool | None:
    """True / False when known, None when it cannot be told (no psutil, access denied)."""
    if type(pid) is not int:
        return False
    try:
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return False
        now = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except Exception:  # noqa: BLE001 - e.g. access denied: it exists
        return None
    if isinstance(created, int | float) and abs(now - created) > 1.0:
        return False  # the pid now belongs to another program
    return True


def _owner_gone(owner: Any) -> str | None:
    """Why the process that owns a run is certainly not running, or None when it may be (or
    when its job runner, still alive, will close the run itself)."""
    import socket

    if not isinstance(owner, dict) or type(owner.get("pid")) is not int:
        return None
    if owner.get("host") != socket.gethostname():
        return None  # another machine's process: nothing here can tell
    if _alive(owner["pid"], owner.get("created")) is not False:
        return None
    parent = owner.get("parent")
    if isinstance(parent, dict) and _alive(parent.get("pid"), parent.get("created")) is not False:
        return None
    return f"process {owner['pid']} that ran it ended without finishing it (killed or crashed)"


def _db_path(p: str | Path) -> str | bytes:
    """A file path as stored: text when it is valid UTF-8, else the file system's own bytes.

    Names from older systems and network shares may hold bytes that are not UTF-8; Python keeps
    them as surrogate escapes, which SQLite text cannot hold. Stored as a BLOB they come back
    byte for byte (``_path_from_db``), so the file is still found.
    """
    s = os.fspath(p)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s)


def _path_from_db(v: str | bytes) -> str:
    """Inverse of ``_db_path``."""
    return os.fsdecode(v) if isinstance(v, bytes) else v


def _file_of(p: Path) -> Path:
    """The file on disk behind an image path: ``file.dcm`` for a frame ``file.dcm#3`` (frames
    of a multi-frame DICOM are images of their own), else the path itself."""
    from lmk_studio.core.images import split_frame

    return split_frame(p)[0]


def _stat(p: Path) -> os.stat_result | None:
    p = _file_of(p)
    try:
        st = p.stat()
    except OSError:
        return None
    return st if p.is_file() else None


# ----------------------------------------------------------------------------- inspection


def _ro_uri(path: Path, immutable: bool = False) -> str:
    return path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")


#: project files this process holds open (resolved path -> count). POSIX record locks belong to
#: the process: closing ANY descriptor of a file drops every lock the process holds on it,
#: SQLite's included, so a plain open()/close() of a project that a live connection is writing
#: lets another process write at the same time and corrupts the file. Such a file is known good.
_OPEN_IN_PROCESS: dict[str, int] = {}
_OPEN_LOCK = threading.Lock()


def _open_key(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return str(path)


def inspect_project_file(path: str | Path) -> int:
    """Check a file is an lmk_studio project this version can use; return its schema version.

    Uses a read-only connection only: a file that is refused is never modified. Without a -wal
    file next to it, it is read as immutable so not even -wal/-shm side files appear; a
    "corrupt" verdict from that view is confirmed with a normal read-only connection (a writer
    may have started meanwhile).
    """
    path = Path(path)
    if not path.exists():
        raise ProjectError(f"{path}: project file not found")
    if path.is_dir():
        raise ProjectError(f"{path}: is a folder, not a project file (.lmk)")
    with _OPEN_LOCK:
        held = _OPEN_IN_PROCESS.get(_open_key(path), 0) > 0
    if held:  # open here already: read nothing through a descriptor of our own (see above)
        return _inspect_sqlite(path, False)
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise ProjectError(f"{path}: cannot read the project file ({e.strerror or e})") from None
    if not head:
        raise ProjectError(f"{path}: the file is empty, not an lmk_studio project "
                           "(a project creation may have been interrupted)")
    if head != SQLITE_MAGIC:
        raise ProjectError(f"{path}: not an lmk_studio project (not an SQLite database)")
    immutable = not Path(str(path) + "-wal").exists()
    try:
        return _inspect_sqlite(path, immutable)
    except _Corrupt as e:
        if not immutable or not Path(str(path) + "-wal").exists():
            raise ProjectError(str(e)) from None
    try:  # a writer appeared while we read the file as immutable: look again, properly
        return _inspect_sqlite(path, False)
    except _Corrupt as e:
        raise ProjectError(str(e)) from None


class _Corrupt(Exception):
    pass


def _inspect_sqlite(path: Path, immutable: bool) -> int:
    try:
        with closing(sqlite3.connect(_ro_uri(path, immutable), uri=True,
                                     timeout=BUSY_TIMEOUT_MS / 1000)) as c:
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if app_id == 0 and c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                raise ProjectError(
                    f"{path}: an empty database, not an lmk_studio project (a project creation "
                    "may have been interrupted); it was not changed")
            if app_id != APPLICATION_ID:
                raise ProjectError(
                    f"{path}: an SQLite database but not an lmk_studio project "
                    f"(application id {app_id:#x}); it was not changed")
            if version > SCHEMA_VERSION:
                raise ProjectError(
                    f"{path}: made by a newer lmk_studio (project schema v{version}; this "
                    f"version {__version__} reads up to v{SCHEMA_VERSION}). Update lmk_studio "
                    "to open it; the file was not changed")
            if version < 1:
                raise ProjectError(
                    f"{path}: an incomplete lmk_studio project (schema v{version}): its "
                    "creation was interrupted; create the project again")
            check = [r[0] for r in c.execute("PRAGMA quick_check(5)").fetchall()]
            if check != ["ok"]:
                raise _Corrupt(f"{path}: the project file is corrupt ({'; '.join(check)}); "
                               "it was not changed. Restore it from a backup")
            row = c.execute("SELECT value FROM meta WHERE key = ?",
                            (_META_PREFIX + "format",)).fetchone()
            if row is None or json.loads(row[0]) != FORMAT_MARK:
                raise ProjectError(f"{path}: not an lmk_studio project (format mark missing)")
            if c.execute("SELECT count(*) FROM template").fetchone()[0] != 1:
                raise _Corrupt(f"{path}: the project has no landmark template (corrupt)")
    except (ProjectError, _Corrupt):
        raise
    except sqlite3.Error as e:
        raise _Corrupt(f"{path}: the project file is corrupt or unreadable "
                       f"({_describe_sqlite_error(e)}); it was not changed") from None
    except (ValueError, TypeError) as e:  # meta value that is not JSON
        raise _Corrupt(f"{path}: the project file is corrupt ({e}); it was not changed"
                       ) from None
    return int(version)


def _migrate(con: sqlite3.Connection, from_version: int) -> None:
    """Run migrations from_version+1 .. SCHEMA_VERSION inside the caller's transaction."""
    for v in range(from_version + 1, SCHEMA_VERSION + 1):
        for stmt in MIGRATIONS[v]:
            con.execute(stmt)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


# ----------------------------------------------------------------------------- the project


class Project:
    """An open project. Use ``Project.create`` / ``Project.open``; a context manager."""

    def __init__(self, path: Path, con: sqlite3.Connection) -> None:
        self.path = path
        self._con: sqlite3.Connection | None = con
        self._lock = threading.RLock()
        self.last_faults: list[tuple[Path, str]] = []
        self.read_only = False  # True when opened from a read-only place: every edit refused
        self._file_state: dict[int, tuple[Path, bool, bool]] = {}  # id -> path, missing, changed
        self._base = path.resolve().parent  # image paths are stored relative to this
        self._template: Template | None = None
        self._template = self._load_template()
        self._open_key = _open_key(path)
        with _OPEN_LOCK:
            _OPEN_IN_PROCESS[self._open_key] = _OPEN_IN_PROCESS.get(self._open_key, 0) + 1

    # ------------------------------------------------------------------ open / create / close

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        con = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                              check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a file system without shared memory
                con.execute("PRAGMA journal_mode = DELETE")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error:
            con.close()
            raise
        return con

    @staticmethod
    def _connect_read_only(path: Path) -> sqlite3.Connection:
        """For a project on a read-only medium or share: readable, every edit refused.

        Without a -wal file no one is writing it, so it is read as immutable (no side files
        are attempted); with one, a normal read-only connection sees the other writer's commits.
        """
        has_wal = Path(str(path) + "-wal").exists()
        last: sqlite3.Error | None = None
        for immutable in ((False, True) if has_wal else (True,)):
            con = sqlite3.connect(_ro_uri(path, immutable), uri=True, isolation_level=None,
                                  timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            try:
                con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                con.execute("SELECT count(*) FROM meta").fetchone()
                return con
            except sqlite3.Error as e:
                con.close()
                last = e
        assert last is not None
        raise last

    @classmethod
    def create(cls, path: str | Path, template: Template,
               images_dir: str | Path | None = None) -> Project:
        """Create a new project file; refuse to touch an existing one."""
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".lmk")
        if path.exists() or Path(str(path) + "-wal").exists():
            raise ProjectError(f"{path}: already exists; choose another name "
                               "(nothing was overwritten)")
        template.validate()
        image_paths: list[Path] = []
        if images_dir is not None:
            from lmk_studio.core.images import list_images

            image_paths = list_images(Path(images_dir))  # LmkError for a missing folder
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            os.close(fd)
        except FileExistsError:
            raise ProjectError(f"{path}: already exists; choose another name "
                               "(nothing was overwritten)") from None
        except OSError as e:
            raise ProjectError(f"{path}: cannot create the project file "
                               f"({e.strerror or e})") from None
        try:
            con = cls._connect(path)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                _migrate(con, 0)
                now = _now()
                con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                    (_META_PREFIX + "format", _dumps(FORMAT_MARK)),
                    (_META_PREFIX + "created", _dumps(now)),
                    (_META_PREFIX + "created_by", _dumps(f"lmk_studio {__version__}")),
                ])
                con.execute("INSERT INTO template (id, json) VALUES (1, ?)",
                            (_dumps(template.to_dict()),))
                con.execute("COMMIT")
            except BaseException:
                con.close()
                raise
        except sqlite3.Error as e:
            remove_project_files(path)
            raise ProjectError(f"{path}: cannot create the project "
                               f"({_describe_sqlite_error(e)}); nothing was written") from None
        except BaseException:
            remove_project_files(path)
            raise
        try:
            proj = cls(path, con)
            if image_paths:
                proj.add_images(image_paths)
        except BaseException:  # a half-made new project is ours to remove
            con.close()
            remove_project_files(path)
            raise
        return proj

    @classmethod
    def open(cls, path: str | Path) -> Project:
        """Open an existing project (upgrading an older schema after a backup copy)."""
        path = Path(path)
        version = inspect_project_file(path)
        if version < SCHEMA_VERSION:
            cls._upgrade(path, version)
        read_only = not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))
        con = None
        if not read_only:
            try:
                con = cls._connect(path)
            except sqlite3.Error as e:
                if _describe_sqlite_error(e) != _READ_ONLY:
                    raise ProjectError(f"{path}: cannot open the project "
                                       f"({_describe_sqlite_error(e)})") from None
                read_only = True
        if con is None:
            try:
                con = cls._connect_read_only(path)
            except sqlite3.Error as e:
                raise ProjectError(f"{path}: cannot open the project read-only "
                                   f"({_describe_sqlite_error(e)})") from None
        try:
            proj = cls(path, con)
        except BaseException:
            con.close()
            raise
        proj.read_only = read_only
        try:
            proj.refresh_files()  # moved / changed images are noticed now
        except BaseException:
            proj.close()
            raise
        try:
            proj.close_orphan_runs()
        except ProjectError:
            pass  # tidying only (e.g. another writer holds the lock): the next open retries
        return proj

    @classmethod
    def _upgrade(cls, path: Path, version: int) -> None:
        backup = path.with_name(f"{path.name}.schema-v{version}.bak")
        try:
            with closing(sqlite3.connect(_ro_uri(path), uri=True)) as src, \
                    closing(sqlite3.connect(str(backup))) as dst:
                src.backup(dst)
        except (sqlite3.Error, OSError) as e:
            remove_project_files(backup)
            problem = _describe_sqlite_error(e) if isinstance(e, sqlite3.Error) else str(e)
            raise ProjectError(
                f"{path}: needs an upgrade from schema v{version} to v{SCHEMA_VERSION} but the "
                f"backup copy {backup.name} could not be written ({problem}); the file was not "
                "changed") from None
        try:
            with closing(cls._connect(path)) as con:
                con.execute("BEGIN IMMEDIATE")
                try:
                    now_v = con.execute("PRAGMA user_version").fetchone()[0]
                    if now_v < SCHEMA_VERSION:  # another process may have upgraded meanwhile
                        _migrate(con, now_v)
                        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                    (_META_PREFIX + f"upgraded_from_v{now_v}", _dumps(_now())))
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise ProjectError(
                f"{path}: the upgrade from schema v{version} failed "
                f"({_describe_sqlite_error(e)}); it was rolled back, the file is unchanged "
                f"(backup: {backup.name})") from None

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                try:
                    self._con.close()
                finally:
                    self._con = None
                    with _OPEN_LOCK:
                        left = _OPEN_IN_PROCESS.get(self._open_key, 1) - 1
                        if left > 0:
                            _OPEN_IN_PROCESS[self._open_key] = left
                        else:
                            _OPEN_IN_PROCESS.pop(self._open_key, None)

    @property
    def closed(self) -> bool:
        return self._con is None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r}{', closed' if self.closed else ''})"

    # ------------------------------------------------------------------ transactions

    def _c(self) -> sqlite3.Connection:
        if self._con is None:
            raise ProjectError(f"{self.path}: the project is closed")
        return self._con

    @contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        """One committed transaction; any failure rolls back and becomes a ProjectError."""
        with self._lock:
            con = self._c()
            if self.read_only:
                raise ProjectError(
                    f"{self.path}: could not save {what}: the project is open read-only "
                    f"({_READ_ONLY}). Nothing saved before was affected; copy the project "
                    "folder to a writable place to edit it")
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._write_error(what, e) from None
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                try:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(e, sqlite3.Error):
                    raise self._write_error(what, e) from None
                if isinstance(e, _Bad):
                    raise self._bad_value(e) from None
                raise

    def _write_error(self, what: str, e: sqlite3.Error) -> ProjectError:
        return ProjectError(
            f"{self.path}: could not save {what}: {_describe_sqlite_error(e)}. This change was "
            "rolled back; everything saved before it is intact")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._c()
            try:
                yield con
            except sqlite3.Error as e:
                raise ProjectError(f"{self.path}: cannot read the project "
                                   f"({_describe_sqlite_error(e)})") from None
            except _Bad as e:
                raise self._bad_value(e) from None

    def _bad_value(self, e: _Bad) -> ProjectError:
        v = repr(e.value)
        v = v if len(v) <= 80 else v[:77] + "..."
        return ProjectError(
            f"{self.path}: {e.where} holds {v}, which is not {e.expected}. The file was changed "
            "outside lmk_studio or is damaged; nothing was changed. Restore it from a backup, "
            "or correct that value")

    # ------------------------------------------------------------------ template

    def _load_template(self) -> Template:
        with self._read() as con:
            row = con.execute("SELECT json FROM template WHERE id = 1").fetchone()
        if row is None:
            raise ProjectError(f"{self.path}: the project has no landmark template (corrupt)")
        try:
            return _template_cls().from_dict(json.loads(row[0]))
        except (ValueError, LmkError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise ProjectError(f"{self.path}: the stored template (table template) is invalid "
                               f"({type(e).__name__}: {str(e)[:200]})") from None

    @property
    def template(self) -> Template:
        assert self._template is not None
        return self._template

    def set_template(self, template: Template) -> None:
        """Replace the template; only while no image has a point (indices would shift)."""
        template.validate()
        with self._tx("the template") as con:
            n = con.execute("SELECT count(*) FROM points").fetchone()[0]
            if n:
                raise ProjectError(
                    f"{self.path}: cannot change the template: {n} landmark point(s) already "
                    "exist (their indices refer to the current template)")
            con.execute("UPDATE template SET json = ? WHERE id = 1",
                        (_dumps(template.to_dict()),))
        self._template = template

    def _n(self) -> int:
        return len(self.template)

    # ------------------------------------------------------------------ images

    def _resolve_stored(self, rel: str | bytes, abs_path: str | bytes) -> Path:
        """Where the image is now: relative to the project folder first, else absolute."""
        rel, abs_path = _path_from_db(rel), _path_from_db(abs_path)
        if rel and not os.path.isabs(rel):
            cand = Path(os.path.normpath(self._base / Path(rel)))
            if _file_of(cand).exists() or not _file_of(Path(abs_path)).exists():
                return cand
        return Path(abs_path)

    def _store_path(self, p: Path) -> str:
        """Relative to the project folder (POSIX separators, ``..`` allowed) so a folder tree
        moved as a whole keeps working; absolute only where no relative path exists (another
        Windows drive). The absolute path is stored as well, for a project file moved alone."""
        try:
            return Path(os.path.relpath(p, self._base)).as_posix()
        except ValueError:
            return str(p)

    def _check_file(self, row: tuple) -> tuple[Path, bool, bool, tuple[int, int] | None]:
        """(where the file is, missing, changed, fresh (size, mtime) to cache when the file was
        only touched: same content hash, new stat)."""
        iid, rel, abs_path, h, size, mtime_ns = row
        p = self._resolve_stored(rel, abs_path)
        st = _stat(p)
        if st is None:
            return p, True, False, None
        if size == st.st_size and mtime_ns == st.st_mtime_ns:
            return p, False, False, None
        from lmk_studio.core.images import quick_hash

        try:
            changed = quick_hash(p) != h
        except (OSError, ImageLoadError):  # vanished or unreadable since the stat
            return p, True, False, None
        return p, False, changed, None if changed else (st.st_size, st.st_mtime_ns)

    def refresh_files(self) -> None:
        """Re-check every image file (moved / changed): done on open.

        Files only touched (same content) get their size/mtime cached so the next open does
        not hash them again; that small write is skipped on a read-only project.
        """
        with self._read() as con:
            rows = con.execute(
                "SELECT id, path, abs_path, hash, size, mtime_ns FROM images").fetchall()
            for r in rows:
                where = f"table images, row id {r[0]}"
                _int("table images, id", r[0])
                for col, v in (("path", r[1]), ("abs_path", r[2])):
                    if not isinstance(v, str | bytes) or not v:
                        raise _Bad(f"{where}, {col}", v, "a file path")
        checked = {r[0]: self._check_file(r) for r in rows}
        self._file_state = {iid: c[:3] for iid, c in checked.items()}
        fresh = [(c[3][0], c[3][1], iid) for iid, c in checked.items() if c[3] is not None]
        if fresh and not self.read_only:
            try:
                with self._tx("the file check cache") as con:
                    con.executemany("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?",
                                    fresh)
            except ProjectError:
                pass  # only a cache: the next open hashes those files again

    def relocate_images(self, folder: str | Path) -> int:
        """Find missing images in ``folder`` by file name + content hash and store their new
        place (one transaction). Returns how many were found."""
        from lmk_studio.core.images import quick_hash

        folder = Path(folder)
        if not folder.is_dir():
            raise LmkError(f"{folder}: folder not found")
        found = []
        with self._read() as con:
            known = {_path_from_db(r[0]) for r in con.execute("SELECT abs_path FROM images")}
        for rec in self.images():
            if not rec.missing:
                continue
            cand = folder / rec.name
            try:
                ap = cand.resolve()
                if str(ap) in known or not _file_of(ap).is_file() or quick_hash(ap) != rec.hash:
                    continue
                st = _file_of(ap).stat()
            except (OSError, ImageLoadError):
                continue
            known.add(str(ap))
            found.append((_db_path(self._store_path(ap)), _db_path(ap), st.st_size,
                          st.st_mtime_ns, rec.id))
        if found:
            with self._tx(f"the new place of {len(found)} image(s)") as con:
                con.executemany("UPDATE images SET path = ?, abs_path = ?, size = ?, "
                                "mtime_ns = ? WHERE id = ?", found)
            for *_, iid in found:
                self._file_state.pop(iid, None)
        return len(found)

    def accept_file_change(self, image_id: int) -> ImageRecord:
        """The user confirms a changed image file is the right one: store its new size and
        hash (points are kept; the caller warns if the size in pixels changed)."""
        from lmk_studio.core.images import quick_hash, read_metadata

        rec = self.image(image_id)
        if rec.missing:
            raise ProjectError(f"{self.path}: image {rec.name} is missing ({rec.path})")
        try:
            meta = read_metadata(rec.path)
            st = _file_of(rec.path).stat()
            h = quick_hash(rec.path)
        except ImageLoadError as e:
            raise ProjectError(f"{self.path}: {e}") from None
        except OSError as e:
            raise ProjectError(f"{self.path}: {rec.path}: {e.strerror or e}") from None
        sp = meta.spacing
        with self._tx(f"the new version of {rec.name}") as con:
            con.execute("UPDATE images SET width = ?, height = ?, hash = ?, size = ?, "
                        "mtime_ns = ?, spacing_row = ?, spacing_col = ?, spacing_source = ? "
                        "WHERE id = ?",
                        (int(meta.width), int(meta.height), h, st.st_size, st.st_mtime_ns,
                         float(sp[0]) if sp else None, float(sp[1]) if sp else None,
                         meta.spacing_source if sp else None, rec.id))
        self._file_state.pop(rec.id, None)
        return self.image(rec.id)

    def remove_images(self, image_ids: Iterable[int]) -> None:
        """Remove images with their points and prediction history (one transaction); the image
        files themselves are not touched."""
        ids = sorted({int(i) for i in image_ids})
        if not ids:
            return
        with self._tx(f"the removal of {len(ids)} image(s)") as con:
            for iid in ids:
                self._require_image(con, iid)
            if self._exemplar(con) in ids:
                con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            (_META_PREFIX + "exemplar_id", _dumps(None)))
            con.executemany("DELETE FROM predictions WHERE image_id = ?", [(i,) for i in ids])
            con.executemany("DELETE FROM points WHERE image_id = ?", [(i,) for i in ids])
            con.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])
        for iid in ids:
            self._file_state.pop(iid, None)

    _IMG_COLS = ("id, path, abs_path, name, width, height, hash, size, mtime_ns, spacing_row, "
                 "spacing_col, spacing_source, calibration_row, calibration_col")

    def _record(self, r: tuple, project_cal: tuple[float, float] | None) -> ImageRecord:
        (iid, rel, abs_path, name, w, h, hsh, size, mtime_ns, sr, sc, ssrc, cr, cc) = r
        _int("table images, id", iid)
        where = f"table images, row id {iid}"
        for col, v in (("path", rel), ("abs_path", abs_path)):
            if not isinstance(v, str | bytes) or not v:
                raise _Bad(f"{where}, {col}", v, "a file path")
        _text(f"{where}, name", name)
        _int(f"{where}, width", w, lo=1)
        _int(f"{where}, height", h, lo=1)
        _text(f"{where}, hash", hsh)
        _int(f"{where}, size", size, optional=True)
        _int(f"{where}, mtime_ns", mtime_ns, optional=True)
        sr = _float(f"{where}, spacing_row", sr, positive=True)
        sc = _float(f"{where}, spacing_col", sc, positive=True)
        ssrc = _text(f"{where}, spacing_source", ssrc, optional=True)
        cr = _float(f"{where}, calibration_row", cr, positive=True)
        cc = _float(f"{where}, calibration_col", cc, positive=True)
        state = self._file_state.get(iid)
        if state is None:
            state = self._check_file((iid, rel, abs_path, hsh, size, mtime_ns))[:3]
            self._file_state[iid] = state
        path, missing, changed = state
        if sr is not None and sc is not None:
            spacing, source = (float(sr), float(sc)), ssrc
        elif cr is not None and cc is not None:
            spacing, source = (float(cr), float(cc)), CALIBRATION_SOURCE
        elif project_cal is not None:
            spacing, source = project_cal, CALIBRATION_SOURCE
        else:
            spacing, source = None, None
        return ImageRecord(int(iid), path, name, int(w), int(h), hsh, spacing, source,
                           missing, changed)

    def _project_calibration(self, con: sqlite3.Connection) -> tuple[float, float] | None:
        key = _META_PREFIX + "calibration"
        return _spacing_pair(f"table meta, key {key!r}", self._meta_raw(con, key))

    def images(self) -> list[ImageRecord]:
        """All images in id order (re-read each call: another process may have added some)."""
        with self._read() as con:
            rows = con.execute(f"SELECT {self._IMG_COLS} FROM images ORDER BY id").fetchall()
            cal = self._project_calibration(con)
            return [self._record(r, cal) for r in rows]

    def image(self, image_id: int) -> ImageRecord:
        with self._read() as con:
            r = con.execute(f"SELECT {self._IMG_COLS} FROM images WHERE id = ?",
                            (int(image_id),)).fetchone()
            if r is None:
                raise ProjectError(f"{self.path}: no image with id {image_id}")
            return self._record(r, self._project_calibration(con))

    def add_images(self, paths: Iterable[str | Path]) -> list[ImageRecord]:
        """Add image files; duplicates and unreadable files are skipped into .last_faults.

        Metadata and hashes are read before the (single, short) transaction opens. A
        multi-frame DICOM, when frames are offered as images (``core.images.dicom_frames_mode``),
        adds one image per frame, ``file.dcm#1`` ... ``file.dcm#N``, from one header read.
        """
        from dataclasses import replace

        from lmk_studio.core.images import (
            MultiFrameDicom,
            frame_hash,
            frame_path,
            quick_hash,
            read_metadata,
        )

        faults: list[tuple[Path, str]] = []
        with self._read() as con:
            known = {_path_from_db(r[0]) for r in con.execute("SELECT abs_path FROM images")}
        rows = []
        for raw in paths:
            p = Path(raw)
            try:
                ap = p.resolve()
            except OSError as e:
                faults.append((p, f"cannot resolve the path ({e})"))
                continue
            if str(ap) in known:
                faults.append((p, "already in the project (skipped)"))
                continue
            try:
                try:
                    entries = [(ap, read_metadata(ap))]
                except MultiFrameDicom as mf:
                    entries = [(frame_path(ap, k), replace(mf.meta, path=frame_path(ap, k),
                                                           frame=k))
                               for k in range(1, mf.frames + 1)]
                st = _file_of(ap).stat()
                h = quick_hash(_file_of(ap))
            except ImageLoadError as e:
                faults.append((p, e.problem))
                continue
            except OSError as e:
                faults.append((p, f"cannot read the file ({e.strerror or e})"))
                continue
            for ep, meta in entries:
                if str(ep) in known:
                    faults.append((ep, "already in the project (skipped)"))
                    continue
                known.add(str(ep))
                sp = meta.spacing
                eh = frame_hash(h, meta.frame) if meta.frame is not None else h
                # the name is what people see and exports carry: printable text, with bytes
                # that are not UTF-8 shown as \xNN; the paths keep the real bytes
                rows.append((_db_path(self._store_path(ep)), _db_path(ep),
                             display_path(ep.name), int(meta.width),
                             int(meta.height), eh, st.st_size, st.st_mtime_ns,
                             float(sp[0]) if sp else None, float(sp[1]) if sp else None,
                             meta.spacing_source if sp else None, _now()))
        ids: list[int] = []
        if rows:
            with self._tx(f"{len(rows)} image(s)") as con:
                for row in rows:
                    cur = con.execute(
                        "INSERT INTO images (path, abs_path, name, width, height, hash, size, "
                        "mtime_ns, spacing_row, spacing_col, spacing_source, added) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                    ids.append(int(cur.lastrowid))
        self.last_faults = faults
        for iid in ids:
            self._file_state.pop(iid, None)
        return [self.image(i) for i in ids]

    def _require_image(self, con: sqlite3.Connection, image_id: int) -> int:
        try:
            iid = int(image_id)
        except (TypeError, ValueError):
            raise ProjectError(f"{self.path}: {image_id!r} is not an image id") from None
        if con.execute("SELECT 1 FROM images WHERE id = ?", (iid,)).fetchone() is None:
            raise ProjectError(f"{self.path}: no image with id {image_id}")
        return iid

    def _require_index(self, index: int) -> int:
        n = self._n()
        try:
            i = index if type(index) is int else int(index)
        except (TypeError, ValueError):
            raise ProjectError(f"{self.path}: {index!r} is not a landmark index") from None
        if not 0 <= i < n:
            raise ProjectError(f"{self.path}: landmark index {index} outside 0..{n - 1} "
                               f"(template {self.template.name!r})")
        return i

    # ------------------------------------------------------------------ points

    @staticmethod
    def _point(row: tuple, where: str = "table points") -> LandmarkPoint:
        idx, x, y, status, source, conf, err, run_id = row
        st = _STATUS.get(status) if isinstance(status, str) else None
        if st is None:
            raise _Bad(f"{where}, landmark {idx!r}, status", status,
                       f"a point status ({', '.join(_STATUS)})")
        src = _SOURCE.get(source) if isinstance(source, str) else None
        if source is not None and src is None:
            raise _Bad(f"{where}, landmark {idx}, source", source,
                       f"a point source ({', '.join(_SOURCE)})")
        w = f"{where}, landmark {idx}"
        return LandmarkPoint(idx, _float(f"{w}, x", x), _float(f"{w}, y", y), st, src,
                             _float(f"{w}, confidence", conf),
                             _float(f"{w}, expected_error_px", err),
                             _int(f"{w}, run_id", run_id, optional=True))

    _PT_COLS = "idx, x, y, status, source, confidence, expected_error_px, run_id"

    def points(self, image_id: int) -> list[LandmarkPoint]:
        """len(template) points in index order; never-set ones are UNLABELLED."""
        n = self._n()
        with self._read() as con:
            iid = self._require_image(con, image_id)
            rows = con.execute(f"SELECT {self._PT_COLS} FROM points WHERE image_id = ? "
                               "ORDER BY idx", (iid,)).fetchall()
            out = [LandmarkPoint(i, None, None) for i in range(n)]
            for r in rows:
                if 0 <= _int(f"table points, image {iid}, idx", r[0]) < n:
                    out[r[0]] = self._point(r, f"table points, image {iid}")
        return out

    def all_points(self) -> dict[int, list[LandmarkPoint]]:
        """Every image's points (one consistent read)."""
        n = self._n()
        with self._read() as con:
            con.execute("BEGIN")  # one snapshot for both queries
            try:
                ids = [r[0] for r in con.execute("SELECT id FROM images ORDER BY id")]
                rows = con.execute(f"SELECT image_id, {self._PT_COLS} FROM points").fetchall()
            finally:
                con.execute("COMMIT")
            out = {i: [LandmarkPoint(k, None, None) for k in range(n)] for i in ids}
            for r in rows:
                lst = out.get(r[0])
                if lst is not None and 0 <= _int(f"table points, image {r[0]}, idx", r[1]) < n:
                    lst[r[1]] = self._point(r[1:], f"table points, image {r[0]}")
        return out

    def _normalise(self, image_id: int, p: LandmarkPoint) -> LandmarkPoint:
        """Validate one point (finite coordinates, placed statuses have x and y)."""
        idx = self._require_index(p.index)
        try:
            status = p.status if isinstance(p.status, Status) else Status(p.status)
            source = p.source if p.source is None or isinstance(p.source, Source) \
                else Source(p.source)
        except ValueError as e:
            raise ProjectError(f"{self.path}: image {image_id} landmark {idx}: {e}") from None
        x = _check_finite(self.path, f"image {image_id} landmark {idx}: x", p.x)
        y = _check_finite(self.path, f"image {image_id} landmark {idx}: y", p.y)
        conf = _check_finite(self.path, f"image {image_id} landmark {idx}: confidence",
                             p.confidence)
        err = _check_finite(self.path, f"image {image_id} landmark {idx}: expected error",
                            p.expected_error_px)
        if status not in (Status.UNLABELLED, Status.ABSENT) and (x is None or y is None):
            raise ProjectError(f"{self.path}: image {image_id} landmark {idx}: status "
                               f"{status.value} needs x and y")
        if status is Status.UNLABELLED:
            return LandmarkPoint(idx, None, None)
        if status is Status.ABSENT:
            x = y = None
        run_id = int(p.run_id) if p.run_id is not None else None
        return LandmarkPoint(idx, x, y, status, source, conf, err, run_id)

    def _write_points(self, con: sqlite3.Connection, rows: Sequence[tuple[int, LandmarkPoint]]
                      ) -> list[tuple[int, LandmarkPoint]]:
        now = _now()
        new_ex = {iid for iid, p in rows if p.status is Status.EXEMPLAR}
        if len(new_ex) > 1:
            raise ProjectError(f"{self.path}: exemplar points on several images "
                               f"({sorted(new_ex)}); a project has one exemplar")
        if new_ex:
            self._set_exemplar(con, next(iter(new_ex)))
        ex = self._exemplar(con)
        if ex is not None and any(iid == ex for iid, _ in rows):
            # the exemplar's human labels are its EXEMPLAR labels
            rows = [(iid, replace(p, status=Status.EXEMPLAR)
                     if iid == ex and p.status in (Status.ACCEPTED, Status.CORRECTED) else p)
                    for iid, p in rows]
        # rows apply in order (a later row for the same slot wins): runs of one kind at a time
        i = 0
        while i < len(rows):
            clear = rows[i][1].status is Status.UNLABELLED
            k = i
            while k < len(rows) and (rows[k][1].status is Status.UNLABELLED) == clear:
                k += 1
            if clear:
                con.executemany("DELETE FROM points WHERE image_id = ? AND idx = ?",
                                [(iid, p.index) for iid, p in rows[i:k]])
            else:
                con.executemany(
                    "INSERT OR REPLACE INTO points (image_id, idx, x, y, status, source, "
                    "confidence, expected_error_px, run_id, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(iid, p.index, p.x, p.y, p.status.value,
                      p.source.value if p.source else None, p.confidence, p.expected_error_px,
                      p.run_id, now) for iid, p in rows[i:k]])
            i = k
        return list(rows)

    def set_point(self, image_id: int, index: int, x: float | None, y: float | None,
                  status: Status = Status.CORRECTED, source: Source | None = Source.MANUAL,
                  confidence: float | None = None, expected_error_px: float | None = None,
                  run_id: int | None = None) -> LandmarkPoint:
        """Set one landmark (one transaction). Status.EXEMPLAR makes the image the exemplar."""
        p = self._normalise(image_id, LandmarkPoint(index, x, y, Status(status), source,
                                                    confidence, expected_error_px, run_id))
        with self._tx(f"landmark {p.index} of image {image_id}") as con:
            iid = self._require_image(con, image_id)
            [(_, stored)] = self._write_points(con, [(iid, p)])
        return stored

    def set_points(self, rows: Iterable[tuple[int, LandmarkPoint]],
                   keep_human: bool = False) -> int:
        """Set many landmarks in ONE transaction (all or nothing); returns how many were written.

        keep_human=True (engine jobs writing predictions) skips the exemplar image and every
        landmark whose stored point is trusted (accepted, corrected) or absent, checked inside the same
        write transaction: a click the user makes while a job runs is never overwritten, even
        if it lands between the job's read and its write.
        """
        rows = list(rows)
        norm = [(iid, self._normalise(iid, p)) for iid, p in rows]
        if not norm:
            return 0
        with self._tx(f"{len(norm)} landmark point(s)") as con:
            ids = {iid for iid, _ in norm}
            checked = {iid: self._require_image(con, iid) for iid in ids}
            if keep_human:
                human = {Status.EXEMPLAR.value, Status.ACCEPTED.value, Status.CORRECTED.value,
                         Status.ABSENT.value}
                marks = ",".join("?" * len(human))
                locked = set()
                for iid in set(checked.values()):
                    locked.update((iid, int(r[0])) for r in con.execute(
                        f"SELECT idx FROM points WHERE image_id = ? AND status IN ({marks})",
                        (iid, *sorted(human))))
                ex = self._exemplar(con)
                norm = [(iid, p) for iid, p in norm
                        if checked[iid] != ex and (checked[iid], p.index) not in locked]
            self._write_points(con, [(checked[iid], p) for iid, p in norm])
        return len(norm)

    def mark_absent(self, image_id: int, index: int) -> None:
        """The landmark is not visible on this image (a trusted human statement)."""
        self.set_point(image_id, index, None, None, Status.ABSENT, Source.MANUAL)

    def clear_point(self, image_id: int, index: int) -> None:
        """Back to UNLABELLED."""
        self.set_point(image_id, index, None, None, Status.UNLABELLED, None)

    def set_status(self, image_id: int, index: int, status: Status) -> LandmarkPoint:
        """Change the status only (e.g. accept: PREDICTED -> ACCEPTED keeps x, y and source)."""
        status = Status(status)
        idx = self._require_index(index)
        with self._tx(f"the status of landmark {idx} of image {image_id}") as con:
            iid = self._require_image(con, image_id)
            r = con.execute(f"SELECT {self._PT_COLS} FROM points WHERE image_id = ? AND idx = ?",
                            (iid, idx)).fetchone()
            cur = self._point(r, f"table points, image {iid}") if r else \
                LandmarkPoint(idx, None, None)
            new = self._normalise(iid, LandmarkPoint(idx, cur.x, cur.y, status, cur.source,
                                                     cur.confidence, cur.expected_error_px,
                                                     cur.run_id))
            [(_, stored)] = self._write_points(con, [(iid, new)])
        return stored

    # ------------------------------------------------------------------ exemplar

    @property
    def exemplar_id(self) -> int | None:
        with self._read() as con:
            return self._exemplar(con)

    def _set_exemplar(self, con: sqlite3.Connection, iid: int | None) -> None:
        old = self._exemplar(con)
        if old is not None and old != iid:  # the old exemplar's labels stay, as human labels
            con.execute("UPDATE points SET status = ?, updated = ? WHERE image_id = ? AND "
                        "status = ?", (Status.CORRECTED.value, _now(), old,
                                       Status.EXEMPLAR.value))
        if iid is not None and old != iid:  # its trusted labels become the exemplar's
            con.execute("UPDATE points SET status = ?, updated = ? WHERE image_id = ? AND "
                        "status IN (?, ?)", (Status.EXEMPLAR.value, _now(), iid,
                                             Status.ACCEPTED.value, Status.CORRECTED.value))
        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (_META_PREFIX + "exemplar_id", _dumps(iid)))

    def set_exemplar(self, image_id: int | None) -> None:
        """Make an image the exemplar (its trusted points become EXEMPLAR; the previous
        exemplar's become CORRECTED). None: no exemplar."""
        with self._tx("the exemplar") as con:
            iid = self._require_image(con, image_id) if image_id is not None else None
            self._set_exemplar(con, iid)

    # ------------------------------------------------------------------ calibration

    def set_calibration(self, spacing: tuple[float, float] | None,
                        image_id: int | None = None) -> None:
        """User pixel spacing (row, col mm/px): per image, or the project default (None).

        A spacing from the file (DICOM) still wins; see ImageRecord.spacing.
        """
        sp = None
        if spacing is not None:
            try:
                r, c = spacing
            except (TypeError, ValueError):
                raise ProjectError(f"{self.path}: spacing must be (row, col) mm/px, "
                                   f"got {spacing!r}") from None
            r = _check_finite(self.path, "row spacing", r)
            c = _check_finite(self.path, "column spacing", c)
            if r is None or c is None or r <= 0 or c <= 0:
                raise ProjectError(f"{self.path}: spacing must be positive mm/px, "
                                   f"got {spacing!r}")
            sp = (r, c)
        with self._tx("the calibration") as con:
            if image_id is None:
                con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            (_META_PREFIX + "calibration", _dumps(list(sp) if sp else None)))
            else:
                iid = self._require_image(con, image_id)
                con.execute("UPDATE images SET calibration_row = ?, calibration_col = ? "
                            "WHERE id = ?", (sp[0] if sp else None, sp[1] if sp else None, iid))

    def calibration(self, image_id: int | None = None) -> tuple[float, float] | None:
        """The user calibration itself (not the file spacing): per image or project default."""
        with self._read() as con:
            if image_id is None:
                return self._project_calibration(con)
            iid = self._require_image(con, image_id)
            r = con.execute("SELECT calibration_row, calibration_col FROM images WHERE id = ?",
                            (iid,)).fetchone()
            where = f"table images, row id {iid}"
            cr = _float(f"{where}, calibration_row", r[0], positive=True)
            cc = _float(f"{where}, calibration_col", r[1], positive=True)
        return (cr, cc) if cr is not None and cc is not None else None

    # ------------------------------------------------------------------ runs

    @staticmethod
    def _run(r: tuple) -> RunRecord:
        rid, kind, status, cfg, met, ck, tm, started, finished = r
        _int("table runs, id", rid)
        w = f"table runs, row id {rid}"
        if status not in RUN_STATUSES:
            raise _Bad(f"{w}, status", status, f"a run status ({', '.join(RUN_STATUSES)})")
        for col, v in (("started", started), ("finished", finished)):
            if v is not None and not isinstance(v, str):
                raise _Bad(f"{w}, {col}", v, "a time stamp")
        if started is None:
            raise _Bad(f"{w}, started", started, "a time stamp")
        return RunRecord(rid, _text(f"{w}, kind", kind), status, _json(f"{w}, config", cfg),
                         _json(f"{w}, metrics", met), _json(f"{w}, checkpoints", ck),
                         _json(f"{w}, timings", tm), started, finished)

    _RUN_COLS = "id, kind, status, config, metrics, checkpoints, timings, started, finished"

    def start_run(self, kind: str, config: dict | None = None) -> int:
        """A new run in status "running", owned by this process (see ``close_orphan_runs``)."""
        if not isinstance(kind, str) or not kind.strip():
            raise ProjectError(f"{self.path}: a run needs a kind, got {kind!r}")
        with self._tx(f"the start of a {kind} run") as con:
            cur = con.execute("INSERT INTO runs (kind, status, config, started) "
                              "VALUES (?, 'running', ?, ?)",
                              (kind, _dumps(config or {}), _now()))
            rid = int(cur.lastrowid)
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (f"{_RUN_OWNER}{rid}", _dumps(_this_process())))
            return rid

    def finish_run(self, run_id: int, status: str, metrics: dict | None = None,
                   checkpoints: dict | None = None, timings: dict | None = None) -> None:
        """Record the outcome; a None dict keeps what the run already has."""
        if status not in RUN_STATUSES:
            raise ProjectError(f"{self.path}: run status must be one of "
                               f"{', '.join(RUN_STATUSES)}, got {status!r}")
        with self._tx(f"the end of run {run_id}") as con:
            r = con.execute("SELECT metrics, checkpoints, timings FROM runs WHERE id = ?",
                            (int(run_id),)).fetchone()
            if r is None:
                raise ProjectError(f"{self.path}: no run with id {run_id}")
            vals = [(_dumps(new) if new is not None else old)
                    for new, old in zip((metrics, checkpoints, timings), r, strict=True)]
            con.execute("UPDATE runs SET status = ?, metrics = ?, checkpoints = ?, timings = ?, "
                        "finished = ? WHERE id = ?",
                        (status, *vals, None if status == "running" else _now(), int(run_id)))
            if status != "running":
                con.execute("DELETE FROM meta WHERE key = ?", (f"{_RUN_OWNER}{int(run_id)}",))

    def close_orphan_runs(self) -> list[int]:
        """Mark runs left "running" by a process that is gone as failed (interrupted); ids.

        The app's job runner already does this for the jobs it starts (engine.process); a CLI
        run killed with SIGKILL, a power cut or a crashed app leaves nobody to do it, so every
        open does. A run is only touched when its owner (pid, process start time, host, stored
        by ``start_run``) is known and certainly not running: same host, and no process with
        that pid and start time. A run of another live process, one started on another
        machine of a shared folder, or one written by an older version without an owner is left
        alone. Runs stay "failed" rather than a new status so that ``--resume`` and the
        training panel, which continue failed runs, keep working.
        """
        if self.read_only:
            return []
        closed: list[int] = []
        with self._tx("the status of interrupted runs") as con:
            rows = con.execute("SELECT id, metrics FROM runs WHERE status = 'running'").fetchall()
            for rid, met in rows:
                raw = con.execute("SELECT value FROM meta WHERE key = ?",
                                  (f"{_RUN_OWNER}{rid}",)).fetchone()
                owner = _json_or_none(raw[0]) if raw else None
                why = _owner_gone(owner)
                if why is None:
                    continue
                try:
                    metrics = json.loads(met)
                except (TypeError, ValueError, RecursionError):
                    metrics = None
                metrics = metrics if isinstance(metrics, dict) else {}
                metrics.update({"error": f"interrupted: {why}", "interrupted": True})
                con.execute("UPDATE runs SET status = 'failed', metrics = ?, finished = ? "
                            "WHERE id = ? AND status = 'running'", (_dumps(metrics), _now(), rid))
                con.execute("DELETE FROM meta WHERE key = ?", (f"{_RUN_OWNER}{rid}",))
                closed.append(int(rid))
        return closed

    def runs(self) -> list[RunRecord]:
        with self._read() as con:
            rows = con.execute(f"SELECT {self._RUN_COLS} FROM runs ORDER BY id").fetchall()
            return [self._run(r) for r in rows]

    def run(self, run_id: int) -> RunRecord:
        with self._read() as con:
            r = con.execute(f"SELECT {self._RUN_COLS} FROM runs WHERE id = ?",
                            (int(run_id),)).fetchone()
            if r is None:
                raise ProjectError(f"{self.path}: no run with id {run_id}")
            return self._run(r)

    def record_predictions(self, run_id: int, rows: Iterable[tuple[int, LandmarkPoint]]) -> None:
        """A run's output history (kept apart from the current points), one transaction."""
        norm = [(int(iid), self._normalise(iid, p)) for iid, p in rows]
        if not norm:
            return
        with self._tx(f"the predictions of run {run_id}") as con:
            if con.execute("SELECT 1 FROM runs WHERE id = ?", (int(run_id),)).fetchone() is None:
                raise ProjectError(f"{self.path}: no run with id {run_id}")
            for iid in {i for i, _ in norm}:
                self._require_image(con, iid)
            con.executemany(
                "INSERT OR REPLACE INTO predictions (run_id, image_id, idx, x, y, confidence, "
                "expected_error_px, status, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(int(run_id), iid, p.index, p.x, p.y, p.confidence, p.expected_error_px,
                  p.status.value, p.source.value if p.source else None) for iid, p in norm])

    def predictions(self, run_id: int, image_ids: Iterable[int] | None = None
                    ) -> dict[int, list[LandmarkPoint]]:
        """image id -> the points the run recorded for it (index order; only recorded ones).

        `image_ids`: only those images (a new patient's prediction must not read a whole folder's
        history: the primary key (run, image, idx) answers it directly)."""
        sql = ("SELECT image_id, idx, x, y, status, source, confidence, expected_error_px "
               "FROM predictions WHERE run_id = ?")
        with self._read() as con:
            if image_ids is None:
                rows = con.execute(sql + " ORDER BY image_id, idx", (int(run_id),)).fetchall()
            else:
                ids, rows = sorted({int(i) for i in image_ids}), []
                for k in range(0, len(ids), 500):
                    part = ids[k:k + 500]
                    rows += con.execute(
                        sql + f" AND image_id IN ({','.join('?' * len(part))}) "
                        "ORDER BY image_id, idx", (int(run_id), *part)).fetchall()
            out: dict[int, list[LandmarkPoint]] = {}
            for r in rows:
                where = f"table predictions, run {run_id}, image {r[0]}"
                _int(f"{where}, idx", r[1])
                out.setdefault(int(r[0]), []).append(self._point((*r[1:], int(run_id)), where))
        return out

    # ------------------------------------------------------------------ meta

    @staticmethod
    def _meta_raw(con: sqlite3.Connection, key: str) -> Any:
        r = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return _json(f"table meta, key {key!r}", r[0], object) if r else None

    def _exemplar(self, con: sqlite3.Connection) -> int | None:
        return _int(f"table meta, key {_META_PREFIX}exemplar_id",
                    self._meta_raw(con, _META_PREFIX + "exemplar_id"), optional=True)

    def get_meta(self, key: str, default: Any = None) -> Any:
        """A JSON value stored under key (GUI state, user settings of this project)."""
        with self._read() as con:
            r = con.execute("SELECT value FROM meta WHERE key = ?", (str(key),)).fetchone()
            return _json(f"table meta, key {key!r}", r[0], object) if r else default

    def set_meta(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key or key.startswith(_META_PREFIX):
            raise ProjectError(f"{self.path}: meta key {key!r} is empty or reserved "
                               f"(keys starting {_META_PREFIX!r} belong to the store)")
        data = _dumps(value)
        with self._tx(f"setting {key!r}") as con:
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, data))

    # ------------------------------------------------------------------ copies

    def save_copy(self, dest: str | Path, models: bool = False) -> Path:
        """A consistent copy of the project as it is now ("Save a copy as…", backups), made
        with SQLite's online backup while other processes may keep writing. Refuses an
        existing destination; a failure leaves no partial file.

        `models`: also copy the trained models (`PROJECT.models/` -> `DEST.models/`); runs name
        them relative to that folder, so the copy predicts with them as the original does."""
        dest = Path(dest)
        if not dest.suffix:
            dest = dest.with_suffix(".lmk")
        src_models, dest_models = Path(str(self.path) + ".models"), Path(str(dest) + ".models")
        for d in (dest, dest_models) if models else (dest,):
            if d.exists():
                raise ProjectError(f"{d}: already exists; choose another name "
                                   "(nothing was overwritten)")
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, closing(sqlite3.connect(str(tmp))) as out:
                self._c().backup(out)
            os.replace(tmp, dest)
        except (sqlite3.Error, OSError) as e:
            remove_project_files(tmp)
            problem = _describe_sqlite_error(e) if isinstance(e, sqlite3.Error) else \
                (e.strerror or str(e))
            raise ProjectError(f"{dest}: could not write the copy of {self.path.name} "
                               f"({problem}); the project itself is unchanged") from None
        if models and src_models.is_dir():
            try:
                shutil.copytree(src_models, dest_models, symlinks=True)
            except OSError as e:
                shutil.rmtree(dest_models, ignore_errors=True)
                raise ProjectError(f"{dest_models}: could not copy the trained models "
                                   f"({e.strerror or e}); the copied project {dest.name} has "
                                   "none") from None
        return dest

    # ------------------------------------------------------------------ summary

    def schema_version(self) -> int:
        with self._read() as con:
            return int(con.execute("PRAGMA user_version").fetchone()[0])  # SQLite's own int

    def status_counts(self) -> dict[Status, int]:
        """How many image x landmark slots are in each status (UNLABELLED included)."""
        n = self._n()
        with self._read() as con:
            n_img = con.execute("SELECT count(*) FROM images").fetchone()[0]
            rows = con.execute("SELECT status, count(*) FROM points p JOIN images i "
                               "ON i.id = p.image_id WHERE p.idx < ? GROUP BY status",
                               (n,)).fetchall()
            counts = {s: 0 for s in Status}
            for s, c in rows:
                st = _STATUS.get(s) if isinstance(s, str) else None
                if st is None:
                    raise _Bad("table points, status", s,
                               f"a point status ({', '.join(_STATUS)})")
                counts[st] += int(c)
        counts[Status.UNLABELLED] += n_img * n - sum(counts.values())
        return counts

    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check: ["ok"] for a sound file."""
        with self._read() as con:
            return [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]


def remove_project_files(path: str | Path) -> None:
    """Delete a project file with its -wal/-shm side files (to undo a creation we made)."""
    path = Path(path)
    for p in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
        try:
            p.unlink()
        except OSError:
            pass


__all__ = ["ImageRecord", "RunRecord", "Project", "inspect_project_file", "SCHEMA_VERSION",
           "MIGRATIONS", "CALIBRATION_SOURCE", "RUN_STATUSES",
           "remove_project_files"]
