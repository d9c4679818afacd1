"""Shared fixtures: offscreen Qt, isolated settings, the Hamedan data when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
HAMEDAN = REPO.parent / "shared" / "data" / "hamedan_ceph"


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Tests never touch the real user's settings, logs or recent-projects list."""
    base = tmp_path_factory.mktemp("userdirs")
    monkeypatch.setenv("LMK_STUDIO_HOME", str(base))
    yield


@pytest.fixture(scope="session")
def hamedan() -> Path:
    """The real Hamedan cephalograms; skip with a reason where ../shared is absent."""
    if not (HAMEDAN / "images" / "001.png").exists():
        pytest.skip(f"Hamedan data not found at {HAMEDAN} (only present in the dev workplace)")
    return HAMEDAN
