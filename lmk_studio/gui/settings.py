"""Window geometry and recent projects in an INI QSettings file under core.paths' config dir.

The file lives under `config_dir()` (LMK_STUDIO_HOME in tests), never in the platform registry,
so tests never touch the real user's settings and the file stays human-readable.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from lmk_studio.core.paths import config_dir

ORG = "lmk_studio"
APP = "lmk-studio"
MAX_RECENT = 10


def settings_path() -> Path:
    return config_dir() / "lmk_studio.ini"


def settings() -> QSettings:
    """A QSettings bound to our INI file (organisation/app names kept for Qt's own use)."""
    s = QSettings(str(settings_path()), QSettings.Format.IniFormat)
    s.setFallbacksEnabled(False)
    return s


def recent_projects() -> list[Path]:
    """Most recent first; entries whose file is gone are kept (shown as missing) until pruned."""
    raw = settings().value("recent/projects", [])
    if isinstance(raw, str):
        raw = [raw] if raw else []
    return [Path(p) for p in (raw or [])]


def add_recent_project(path: Path) -> None:
    path = Path(path).resolve()
    items = [p for p in recent_projects() if p != path]
    items.insert(0, path)
    s = settings()
    s.setValue("recent/projects", [str(p) for p in items[:MAX_RECENT]])
    s.sync()


def remove_recent_project(path: Path) -> None:
    items = [p for p in recent_projects() if p != Path(path)]
    s = settings()
    s.setValue("recent/projects", [str(p) for p in items])
    s.sync()


def last_template() -> str | None:
    """The bundled template chosen for the last new project (the picker starts there)."""
    v = settings().value("new_project/template", None)
    return str(v) if v else None


def set_last_template(name: str) -> None:
    set_value("new_project/template", name)


def get_value(key: str, default=None):
    return settings().value(key, default)


def set_value(key: str, value) -> None:
    s = settings()
    s.setValue(key, value)
    s.sync()
