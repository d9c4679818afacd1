"""Where settings, logs and caches live: platformdirs, overridable for tests and portable use.

Set LMK_STUDIO_HOME to put everything under one folder (the test suite does, so tests never
touch the real user's settings).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "lmk_studio"


def _base() -> Path | None:
    home = os.environ.get("LMK_STUDIO_HOME")
    return Path(home) if home else None


def config_dir() -> Path:
    b = _base()
    d = b / "config" if b else Path(platformdirs.user_config_dir(APP, appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d


def log_dir() -> Path:
    b = _base()
    d = b / "logs" if b else Path(platformdirs.user_log_dir(APP, appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_dir() -> Path:
    b = _base()
    d = b / "cache" if b else Path(platformdirs.user_cache_dir(APP, appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d


def data_dir() -> Path:
    """Per-user data, e.g. the generated demo project."""
    b = _base()
    d = b / "data" if b else Path(platformdirs.user_data_dir(APP, appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d
