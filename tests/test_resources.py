"""Bundled resources are found in a checkout and after a non-editable `pip install .`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmk_studio.core import resources

REPO = Path(__file__).resolve().parents[1]


def test_checkout_resources_win_in_a_checkout() -> None:
    assert resources.resources_root() == REPO / "resources"
    assert resources.resource_path("templates", "isbi2015-ceph-19.json").is_file()


def test_installed_copy_is_found_when_there_is_no_checkout(tmp_path, monkeypatch) -> None:
    installed = tmp_path / "prefix" / "share" / "lmk_studio" / "resources"
    (installed / "templates").mkdir(parents=True)
    monkeypatch.setattr(resources, "__file__", str(tmp_path / "site" / "lmk_studio" / "core"
                                                   / "resources.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert resources.resources_root() == installed


def test_pyproject_installs_every_resource_folder_the_app_reads() -> None:
    """data-files must list each folder (not recursive): a new one would silently be missing."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = {Path(k).relative_to("share/lmk_studio/resources").as_posix()
              for k in cfg["tool"]["setuptools"]["data-files"]}
    needed = {p.parent.relative_to(REPO / "resources").as_posix()
              for p in (REPO / "resources").rglob("*") if p.is_file()
              and p.parent.name != "screenshots"}
    assert needed <= listed, needed - listed
