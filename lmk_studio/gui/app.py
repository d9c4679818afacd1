"""`lmk-studio` without a command: the desktop app."""

from __future__ import annotations

import logging
import multiprocessing
import sys
from pathlib import Path

log = logging.getLogger("lmk_studio.gui.app")


def make_app():
    """The QApplication (created once), with pyqtgraph set to row-major images."""
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    from lmk_studio.gui.settings import APP, ORG

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    from lmk_studio.gui.job_bridge import guard_pyside_refcounts

    guard_pyside_refcounts()  # before the first widget: a leaky PySide6 must not kill us
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    from PySide6.QtGui import QIcon

    from lmk_studio.core.resources import resource_path

    icon = resource_path("icons", "lmk_studio.svg")
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    return app


def run_app(project: str | None = None, demo: bool = False) -> int:
    """Open the window (on `project`, or the demo, or the start screen); returns the exit code."""
    multiprocessing.freeze_support()
    from lmk_studio.gui.errors import install_excepthook, setup_logging

    path = setup_logging()
    log.info("lmk_studio starting (log %s)", path)
    from lmk_studio.gui.platform_check import preflight_message

    hint = preflight_message()  # before Qt: a missing xcb library aborts inside QApplication()
    if hint:
        log.warning("%s", hint)
        print(hint, file=sys.stderr, flush=True)
    app = make_app()
    from lmk_studio.gui.main_window import MainWindow

    win = MainWindow()
    install_excepthook(win)
    win.show()
    if demo:
        win.open_demo()
    elif project:
        win.open_project(Path(project))
    code = int(app.exec())
    dispose(win)
    return code


def dispose(win) -> None:
    """Delete the window's Qt objects before the interpreter finalises: letting the garbage
    collector meet pyqtgraph items during finalisation can abort the process at exit."""
    import gc

    from PySide6.QtWidgets import QApplication

    win.close()
    win.deleteLater()
    QApplication.processEvents()
    QApplication.sendPostedEvents(None, 0)
    del win
    gc.collect()
