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


# ---- image limits, read by core.images from this same file (no Qt there) -----------------


def max_pixels_setting() -> int | None:
    """The user's pixel limit (largest image read, width x height); None = the default.

    core.images reads this key itself (``core.images.max_pixels``), so the command line and
    the engine's job processes obey it too; ``LMK_STUDIO_MAX_PIXELS`` overrides it for a run.
    """
    from lmk_studio.core.images import MAX_PIXELS_KEY, SETTINGS_SECTION

    v = settings().value(f"{SETTINGS_SECTION}/{MAX_PIXELS_KEY}", None)
    try:
        n = int(float(v)) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return n if n and n > 0 else None


def set_max_pixels_setting(n: int | None) -> None:
    """Store the pixel limit (None or 0: back to the default of 64 megapixels)."""
    from lmk_studio.core.images import MAX_PIXELS_KEY, SETTINGS_SECTION

    key = f"{SETTINGS_SECTION}/{MAX_PIXELS_KEY}"
    s = settings()
    if n is None or int(n) <= 0:
        s.remove(key)
    else:
        s.setValue(key, int(n))
    s.sync()


def dicom_frames_setting() -> str:
    """What a multi-frame DICOM becomes: "images" (each frame an image) or "refuse"."""
    from lmk_studio.core.images import DEFAULT_DICOM_FRAMES, DICOM_FRAMES_KEY, SETTINGS_SECTION

    v = settings().value(f"{SETTINGS_SECTION}/{DICOM_FRAMES_KEY}", DEFAULT_DICOM_FRAMES)
    return str(v) if v else DEFAULT_DICOM_FRAMES


def set_dicom_frames_setting(mode: str) -> None:
    """Store "images" or "refuse" (anything else is refused here, not at the next image)."""
    from lmk_studio.core.images import (
        DICOM_FRAMES_KEY,
        FRAMES_AS_IMAGES,
        FRAMES_REFUSED,
        SETTINGS_SECTION,
    )

    if mode not in (FRAMES_AS_IMAGES, FRAMES_REFUSED):
        raise ValueError(f"dicom frames: {mode!r} is not {FRAMES_AS_IMAGES!r} or "
                         f"{FRAMES_REFUSED!r}")
    set_value(f"{SETTINGS_SECTION}/{DICOM_FRAMES_KEY}", mode)
