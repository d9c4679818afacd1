"""Issue 12 item 4: the review keys work wherever the focus is. After a click in the Images list,
on the job picker or into the training log, Space / Shift+Space / Return still review; typing a
space in the Images filter stays typing. (Offscreen, the list and the picker already passed Space
to the window's shortcut before the fix; Return from the read-only log did not.)"""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402
from test_gui_helpers import main_window  # noqa: E402

from lmk_studio.core.points import LandmarkPoint, Source, Status  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    with main_window(qtbot, auto_preview=False) as w:
        yield w


@pytest.fixture
def demo(tmp_path):
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.core.store import Project

    path = write_demo_project(tmp_path / "demo", n=4, size=(160, 128), seed=0)
    with Project.open(path) as proj:
        ex = proj.exemplar_id
        run = proj.start_run("classical", {})
        rows = [(r.id, LandmarkPoint(k, 20.0 + 5 * k, 30.0 + 4 * k, Status.PREDICTED,
                                     Source.CLASSICAL, 0.1 + 0.05 * k + 0.01 * r.id, None, run))
                for r in proj.images() if r.id != ex for k in range(len(proj.template))]
        proj.record_predictions(run, rows)
        proj.set_points(rows)
        proj.finish_run(run, "finished")
    return path


def _focus_click(qtbot, widget, pos=None) -> None:
    pos = widget.rect().center() if pos is None else pos
    QTest.mouseClick(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
    qtbot.wait(20)


def _key(qtbot, key, mods=Qt.KeyboardModifier.NoModifier) -> None:
    qtbot.keyClick(QApplication.focusWidget(), key, mods)


def test_review_keys_from_the_images_list_table_and_pickers(win, qtbot, demo) -> None:
    assert win.open_project(demo)
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=3000)
    items = list(win.review.items)
    assert len(items) > 3

    # the user clicks an image in the Images list, then presses Space
    view = win.image_list.view
    idx = view.model().index(1, 0)
    _focus_click(qtbot, view.viewport(), view.visualRect(idx).center())
    assert QApplication.focusWidget() is view
    here = (win.doc.image_id, win.doc.landmark)  # review continues from what the user looks at
    k = items.index(here)
    _key(qtbot, Qt.Key.Key_Space)
    assert (win.doc.image_id, win.doc.landmark) == items[k + 1]
    _key(qtbot, Qt.Key.Key_Space)
    assert (win.doc.image_id, win.doc.landmark) == items[k + 2]
    _key(qtbot, Qt.Key.Key_Space, Qt.KeyboardModifier.ShiftModifier)
    assert (win.doc.image_id, win.doc.landmark) == items[k + 1]
    # Return accepts the point under review and moves on, still from the list
    view.setFocus()
    _key(qtbot, Qt.Key.Key_Return)
    assert win.doc.project.points(items[k + 1][0])[items[k + 1][1]].status is Status.ACCEPTED
    assert (win.doc.image_id, win.doc.landmark) == items[k + 2]

    # from the Training panel's job picker (a combo box opens on Space otherwise)
    win.dock_training.raise_()
    combo = win.training.job_combo
    combo.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is combo, timeout=2000)
    job = combo.currentIndex()
    _key(qtbot, Qt.Key.Key_Space)
    assert (win.doc.image_id, win.doc.landmark) == items[k + 3]
    assert combo.currentIndex() == job and not combo.view().isVisible()

    # from the training log (read-only text: not typing), Return accepts
    log_view = win.training.log_view
    _focus_click(qtbot, log_view.viewport())
    qtbot.waitUntil(lambda: QApplication.focusWidget() is log_view, timeout=2000)
    cur = (win.doc.image_id, win.doc.landmark)
    _key(qtbot, Qt.Key.Key_Return)
    assert win.doc.project.points(cur[0])[cur[1]].status is Status.ACCEPTED
    assert (win.doc.image_id, win.doc.landmark) != cur

    # typing in the Images filter keeps its spaces and reviews nothing
    f = win.image_list.search
    f.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is f, timeout=2000)
    before = (win.doc.image_id, win.doc.landmark)
    qtbot.keyClicks(f, "ph ")
    assert f.text() == "ph " and (win.doc.image_id, win.doc.landmark) == before
