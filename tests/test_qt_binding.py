"""The installed Qt binding must not leak references on void calls (PySide6 6.12.0 did: the
process aborted with 'none_dealloc' after ~17k calls on Python 3.11), and the app's guard holds
where a leaky build is installed anyway."""

from __future__ import annotations

import sys

import pytest


def test_void_qt_calls_keep_none_alive_for_a_long_session(qapp) -> None:
    from PySide6.QtCore import QTimer

    from lmk_studio.gui.app import make_app

    make_app()
    t = QTimer()
    before = sys.getrefcount(None)
    for _ in range(30_000):  # well past the ~17k calls that aborted the process
        t.setInterval(1)
    if sys.version_info < (3, 12):
        assert sys.getrefcount(None) >= before - 10


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None is immortal from Python 3.12")
def test_guard_reports_whether_it_was_needed() -> None:
    import PySide6

    from lmk_studio.gui import job_bridge

    leaky = PySide6.__version__ == "6.12.0"
    assert job_bridge.guard_pyside_refcounts() is leaky
