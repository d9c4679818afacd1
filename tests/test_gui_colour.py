"""A colour file (a photographed film, a secondary capture) is shown as grey, and the window says
so and how, instead of silently dropping the colour."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from test_gui_helpers import main_window, wait_shown  # noqa: E402

pytestmark = pytest.mark.gui


def test_a_colour_image_says_it_is_shown_as_grey(qtbot, tmp_path) -> None:
    from lmk_studio.core.phantoms import write_demo_project

    lmk = write_demo_project(tmp_path / "demo", n=3, size=(96, 96), seed=0)
    colour = tmp_path / "demo" / "images" / "photo_of_film.png"
    bgr = np.zeros((96, 96, 3), np.uint8)
    bgr[..., 2] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]
    cv2.imwrite(str(colour), bgr)
    with main_window(qtbot, auto_preview=False, auto_suggest=False) as win:
        assert win.open_project(lmk)
        added = win.doc.project.add_images([colour])
        win.doc.reload_images()
        win.doc.set_image(added[0].id)
        wait_shown(qtbot, win, added[0].id)
        msg = win.statusBar().currentMessage()
        assert "photo_of_film.png" in msg and "colour shown as grey" in msg, msg
