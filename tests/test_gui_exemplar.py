"""The exemplar suggestion in the real window, offscreen: a new project without an exemplar
ranks its images in the background (create_project returns before the answer), the banner names
the most typical image, Use it shows that image, the first click makes it the exemplar and the
banner goes; a project with an exemplar gets no banner; closing the project drops a running
ranking."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from test_gui_helpers import click_image, main_window, wait_shown, write_phantom_folder  # noqa: E402

from lmk_studio.core.phantoms import make_phantom_set, phantom_template  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    with main_window(qtbot, auto_preview=False) as w:
        yield w


def _folder(tmp_path):
    """Five phantoms and a flipped copy of one (ranked last by the engine)."""
    folder = tmp_path / "xrays"
    write_phantom_folder(folder, n=5)
    img = make_phantom_set(3, size=(160, 128), seed=0)[2].image[:, ::-1]
    ok, buf = cv2.imencode(".png", np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    assert ok
    (folder / "ph_90_flipped.png").write_bytes(buf.tobytes())
    return folder


def test_new_project_offers_the_suggestion_and_use_it(win, qtbot, tmp_path) -> None:
    folder = _folder(tmp_path)
    assert win.create_project(tmp_path / "p.lmk", phantom_template(), folder)
    hint = win.exemplar_hint
    # the ranking runs off the GUI thread: create_project came back before its answer
    assert hint.isVisible() and hint.candidate is None
    assert "Looking for the most typical image" in hint.label.text()
    qtbot.waitUntil(lambda: hint.candidate is not None, timeout=20_000)
    best = hint.candidate
    assert best.name != "ph_90_flipped.png"
    text = hint.label.text()
    assert text.startswith(f"Suggested exemplar: {best.name} (most typical of the folder")
    assert hint.use.isVisible()
    assert win.doc.exemplar_id is None  # a suggestion only: nothing written yet

    qtbot.mouseClick(hint.use, Qt.MouseButton.LeftButton)
    assert win.doc.image_id == best.image_id
    assert not hint.use.isVisible() and best.name in hint.label.text()
    wait_shown(qtbot, win, best.image_id)
    click_image(qtbot, win, 40.0, 50.0)  # the first landmark: this image becomes the exemplar
    qtbot.waitUntil(lambda: win.doc.exemplar_id == best.image_id, timeout=5000)
    assert not hint.isVisible()


def test_user_may_pick_another_image(win, qtbot, tmp_path) -> None:
    folder = _folder(tmp_path)
    assert win.create_project(tmp_path / "p.lmk", phantom_template(), folder)
    hint = win.exemplar_hint
    qtbot.waitUntil(lambda: hint.candidate is not None, timeout=20_000)
    other = next(r.id for r in win.doc.records() if r.id != hint.candidate.image_id)
    win.doc.set_image(other)
    wait_shown(qtbot, win, other)
    click_image(qtbot, win, 40.0, 50.0)
    qtbot.waitUntil(lambda: win.doc.exemplar_id == other, timeout=5000)
    assert not hint.isVisible()


def test_no_banner_with_an_exemplar_and_close_drops_the_ranking(win, qtbot, tmp_path) -> None:
    from lmk_studio.core.phantoms import write_demo_project

    lmk = write_demo_project(tmp_path / "demo", n=4, size=(160, 128))
    assert win.open_project(lmk)
    assert not win.exemplar_hint.isVisible() and not win.suggester.is_running()
    win.close_project()

    got = []
    win.suggester.ready.connect(got.append)
    assert win.create_project(tmp_path / "q.lmk", phantom_template(), _folder(tmp_path / "b"))
    win.close_project()  # before the answer: it must never arrive
    assert win.suggester.wait(10.0)
    qtbot.wait(100)
    assert got == [] and not win.exemplar_hint.isVisible()
