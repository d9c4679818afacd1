"""Locate bundled resources (templates, presets, icons) in a checkout or a PyInstaller build."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_root() -> Path:
    """`resources/` beside the package in a checkout (and an editable install); inside the
    bundle when frozen; `<prefix>/share/lmk_studio/resources` after a plain `pip install .`
    (pyproject's data-files put it there)."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    checkout = Path(__file__).resolve().parents[2] / "resources"
    if checkout.is_dir():
        return checkout
    for prefix in (sys.prefix, sys.base_prefix):
        installed = Path(prefix) / "share" / "lmk_studio" / "resources"
        if installed.is_dir():
            return installed
    return checkout


def resource_path(*parts: str) -> Path:
    return resources_root().joinpath(*parts)
