"""Errors shown in words with the log path; every unexpected exception is logged to a file.

Windowed apps swallow tracebacks, so a rotating log under platformdirs' log dir keeps them, and
the dialog tells the user where it is. Nothing is swallowed: unhandled exceptions reach
`sys.excepthook`, which logs and shows them.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import traceback
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

from lmk_studio.core.errors import LmkError
from lmk_studio.core.paths import log_dir

log = logging.getLogger("lmk_studio.gui")
_LOG_FILE: Path | None = None
_PARENT: QWidget | None = None


def log_path() -> Path:
    return _LOG_FILE if _LOG_FILE is not None else log_dir() / "lmk_studio.log"


def setup_logging() -> Path:
    """Attach a rotating file handler to the `lmk_studio` logger once; returns the log file."""
    global _LOG_FILE
    path = log_dir() / "lmk_studio.log"
    root = logging.getLogger("lmk_studio")
    for h in root.handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path:
            _LOG_FILE = path
            return path
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _LOG_FILE = path
    return path


def describe(exc: BaseException) -> str:
    """User words for an exception: LmkError messages as they are, others with their type."""
    if isinstance(exc, LmkError):
        return str(exc)
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{name}{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def show_error(parent: QWidget | None, title: str, message: str,
               exc: BaseException | None = None) -> QMessageBox:
    """Log, then show a non-modal message box (never blocks the event loop or a test)."""
    if exc is not None and not isinstance(exc, LmkError):
        log.error("%s: %s\n%s", title, message,
                  "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    else:
        log.error("%s: %s", title, message)
    box = QMessageBox(QMessageBox.Icon.Warning, title,
                      f"{message}\n\nDetails are in the log: {log_path()}",
                      QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorBox")
    box.setWindowModality(Qt.WindowModality.NonModal)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.show()
    return box


def report_exception(parent: QWidget | None, title: str, exc: BaseException) -> QMessageBox:
    return show_error(parent, title, describe(exc), exc)


def install_excepthook(parent: QWidget | None) -> None:
    """Unhandled exceptions in slots go to the log and to a dialog instead of vanishing."""
    global _PARENT
    _PARENT = parent

    def hook(etype, value, tb):
        if issubclass(etype, KeyboardInterrupt):
            sys.__excepthook__(etype, value, tb)
            return
        log.error("unhandled exception\n%s", "".join(traceback.format_exception(etype, value, tb)))
        try:
            show_error(_PARENT, "Unexpected error", describe(value))
        except Exception:  # noqa: BLE001 - a failing dialog must not hide the original error
            sys.__excepthook__(etype, value, tb)

    sys.excepthook = hook
