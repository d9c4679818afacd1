"""Helpers (no tests here) for the GUI tests: the main window, a tiny phantom folder and real
mouse gestures.

Mouse events go to the canvas viewport at the widget position of an image point, so the tests
exercise pyqtgraph's own click/drag detection, as a user's mouse would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest


@contextlib.contextmanager
def main_window(qtbot, *, auto_preview: bool = True, auto_suggest: bool = True,
                size: tuple[int, int] | None = (1200, 800)) -> Iterator[Any]:
    """The real main window, shown offscreen; afterwards its job and exemplar ranking are
    stopped and it is closed, so no test leaves a child process or thread behind."""
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    make_app()
    w = MainWindow()
    w.auto_preview = auto_preview
    w.auto_suggest = auto_suggest
    qtbot.addWidget(w)
    if size is not None:
        w.resize(*size)
    w.show()
    try:
        yield w
    finally:
        if w.training.is_running():
            w.training.cancel()
        w.suggester.cancel()
        w.suggester.wait(5.0)
        w.close()


# pyqtgraph drops mouse moves closer than 10 ms apart (mouseRateLimit): pace the gestures.
STEP_MS = 25


def write_phantom_folder(folder: Path, n: int = 5, size: tuple[int, int] = (160, 128),
                         broken: bool = False) -> np.ndarray:
    """PNG phantoms (image 0 first by name) and optionally a corrupt file; returns true points."""
    import cv2

    from lmk_studio.core.phantoms import make_phantom_set

    folder.mkdir(parents=True, exist_ok=True)
    ph = make_phantom_set(n, size=size, seed=0)
    for i, p in enumerate(ph):
        u8 = np.clip(p.image * 255.0 + 0.5, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".png", u8)
        assert ok
        (folder / f"ph_{i:02d}.png").write_bytes(buf.tobytes())
    if broken:
        (folder / "ph_99_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 20)
    return np.stack([p.points for p in ph])


def wait_shown(qtbot, win, image_id: int | None = None, timeout: int = 10_000) -> None:
    want = win.doc.image_id if image_id is None else image_id
    qtbot.waitUntil(lambda: win.shown_image_id == want and win.shown_image_id is not None,
                    timeout=timeout)
    qtbot.wait(30)


def widget_pos(win, x: float, y: float) -> QPoint:
    return win.canvas.view_to_widget(x, y)


def click_image(qtbot, win, x: float, y: float) -> None:
    vp = win.canvas.view.viewport()
    pos = widget_pos(win, x, y)
    QTest.mouseMove(vp, pos)
    qtbot.wait(STEP_MS)
    QTest.mouseClick(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
    qtbot.wait(STEP_MS)


def drag_image(qtbot, win, x0: float, y0: float, x1: float, y1: float, steps: int = 6) -> None:
    """Press on (x0, y0), move in steps, release on (x1, y1): one user drag."""
    vp = win.canvas.view.viewport()
    p0 = widget_pos(win, x0, y0)
    p1 = widget_pos(win, x1, y1)
    QTest.mouseMove(vp, p0)
    qtbot.wait(STEP_MS)
    QTest.mousePress(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, p0)
    qtbot.wait(STEP_MS)
    for k in range(1, steps + 1):
        t = k / steps
        p = QPoint(round(p0.x() + (p1.x() - p0.x()) * t), round(p0.y() + (p1.y() - p0.y()) * t))
        QTest.mouseMove(vp, p)
        qtbot.wait(STEP_MS)
    QTest.mouseRelease(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, p1)
    qtbot.wait(STEP_MS)


def pixel_tolerance(win) -> float:
    """One screen pixel in image pixels (widget positions are integers)."""
    return 1.0 / win.canvas.zoom_factor() + 1e-6
