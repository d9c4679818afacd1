"""Qt face of engine.process.JobProcess: a timer polls the child's queue and re-emits signals.

The GUI thread never waits on the training process: each tick drains at most `max_per_tick`
events without blocking, so a chatty child cannot stall the event loop either.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from lmk_studio.engine.common import ProgressEvent
from lmk_studio.engine.process import JobProcess

log = logging.getLogger("lmk_studio.gui.jobs")


def guard_pyside_refcounts() -> bool:
    """Work around a PySide6 refcount bug that kills the GUI process on CPython < 3.12.

    Measured with PySide6 6.12.0 on Python 3.11.7: every call of a void Qt method (setText,
    setValue, QTimer.start, pyqtgraph's prepareGeometryChange on each repaint...) drops one
    reference to None that it never took (True/False too, seen at exit), so after roughly 17,000
    such calls CPython aborts with "Fatal Python error: none_dealloc". From 3.12 on these
    objects are immortal and nothing happens. When the leak is detected, the three singletons
    get 2**40 extra references, which makes them effectively immortal here too. Returns True
    when the guard was applied. Idempotent.
    """
    global _GUARDED
    if _GUARDED or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _GUARDED
    probe = QTimer()
    before = sys.getrefcount(None)
    for _ in range(8):
        probe.setInterval(1)
    if sys.getrefcount(None) >= before:
        return False  # this PySide6 build is fine
    import ctypes

    for obj in (None, True, False):
        cell = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt (non-debug CPython layout)
        was = sys.getrefcount(obj)
        cell.value += 1 << 40
        if sys.getrefcount(obj) - was != 1 << 40:  # unexpected layout: undo, say so
            cell.value -= 1 << 40
            log.warning("PySide6 leaks references to %r; could not guard against it", obj)
            return False
    _GUARDED = True
    log.info("this PySide6 build drops references to None on every void call (a crash on "
                "Python < 3.12 after ~17k calls); guarded by pinning None/True/False")
    return True


_GUARDED = False
guard_pyside_refcounts()


def progress_from_dict(ev: dict[str, Any]) -> ProgressEvent:
    """The engine's ProgressEvent back from the child's plain dict."""
    return ProgressEvent(stage=str(ev.get("stage", "")), epoch=int(ev.get("epoch", 0)),
                         epochs=int(ev.get("epochs", 1)), step=int(ev.get("step", 0)),
                         steps=int(ev.get("steps", 1)), losses=dict(ev.get("losses") or {}),
                         eta_s=ev.get("eta_s"), message=str(ev.get("message", "")))


class JobBridge(QObject):
    """Runs one job at a time in a child process and turns its events into Qt signals."""

    started = Signal(str)               # job name (the child is up)
    progress = Signal(object)           # engine.common.ProgressEvent
    log_line = Signal(int, str)         # logging level, text
    run_started = Signal(int, str)      # run id, kind
    finished = Signal(list)             # run ids written
    cancelled = Signal(list)            # run ids started before the stop
    failed = Signal(str)                # words, including crashes (exit code, last log lines)
    ended = Signal(dict)                # the final event as the process runner made it
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, interval_ms: int = 50,
                 max_per_tick: int = 200) -> None:
        super().__init__(parent)
        self.process = JobProcess()
        self.max_per_tick = max_per_tick
        self.job: str | None = None
        self.last_final: dict[str, Any] | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def is_running(self) -> bool:
        return self.process.is_running()

    @property
    def log_path(self):
        return self.process.log_path

    def start(self, spec: dict[str, Any]) -> None:
        """Spawn the job (returns at once); raises LmkError for a bad spec or a running job."""
        self.process.start(spec)
        self.job = str(spec.get("job"))
        self.last_final = None
        self._timer.start()
        self.busy_changed.emit(True)

    def cancel(self) -> None:
        self.process.cancel()

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """For closing the window: cancel, wait briefly for the child, deliver its end.
        True when nothing is left running."""
        if not self.process.is_running():
            return True
        self.process.cancel()
        final = self.process.wait(timeout=timeout_s, on_event=self._dispatch)
        self._timer.stop()
        return final is not None or not self.process.is_alive()

    def _tick(self) -> None:
        try:
            events = self.process.poll_events(self.max_per_tick)
        except Exception:  # noqa: BLE001 - keep the loop alive, say why
            log.exception("polling the job process failed")
            events = []
        for ev in events:
            self._dispatch(ev)
        if not self.process.is_running():
            self._timer.stop()

    def _dispatch(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "progress":
            self.progress.emit(progress_from_dict(ev))
        elif kind == "log":
            self.log_line.emit(int(ev.get("level", logging.INFO)), str(ev.get("message", "")))
        elif kind == "run_started":
            self.run_started.emit(int(ev["run_id"]), str(ev.get("kind", "")))
        elif kind == "started":
            self.started.emit(str(ev.get("job", self.job)))
        elif kind in ("finished", "cancelled", "failed", "crashed"):
            self.last_final = ev
            self._timer.stop()
            self.busy_changed.emit(False)
            if kind == "finished":
                self.finished.emit(list(ev.get("run_ids", [])))
            elif kind == "cancelled":
                self.cancelled.emit(list(ev.get("run_ids", [])))
            else:
                msg = str(ev.get("message", "the job failed"))
                if ev.get("log_path"):
                    msg += f"\n\nFull log: {ev['log_path']}"
                self.failed.emit(msg)
            self.ended.emit(ev)
