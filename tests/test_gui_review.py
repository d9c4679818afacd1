"""Review and navigation without a training (predictions written through the store as a run
would): the queue's order, Space / Shift+Space, accept and accept-all with undo, progress counts,
image statuses; plus the canvas gestures (wheel zooms around the cursor, a drag on the image pans
and places nothing), image keys, opening a recent project and changing the template before
annotation."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("lmk_studio.core.store")
pytest.importorskip("lmk_studio.core.phantoms")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QDialog  # noqa: E402
from test_gui_helpers import (  # noqa: E402
    click_image,
    drag_image,
    pixel_tolerance,
    wait_shown,
)

from lmk_studio.core.points import LandmarkPoint, Source, Status  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    make_app()
    w = MainWindow()
    w.auto_preview = False
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    w.activateWindow()
    yield w
    w.close()


@pytest.fixture
def demo(tmp_path):
    from lmk_studio.core.phantoms import write_demo_project

    return write_demo_project(tmp_path / "démo", n=4, size=(160, 128), seed=0)


def _predict(proj, ex: int, conf) -> int:
    """A finished Stage II run with confidence conf(image, landmark) for every other image."""
    run = proj.start_run("stage2", {"preset": "test"})
    rows = [(i, LandmarkPoint(k, 20.0 + 5 * k, 30.0 + 4 * k, Status.PREDICTED, Source.STAGE2,
                              conf(i, k), 2.0, run))
            for i in [r.id for r in proj.images()] if i != ex
            for k in range(len(proj.template))]
    proj.record_predictions(run, rows)
    proj.set_points(rows)
    proj.finish_run(run, "finished")
    return run


def test_review_queue_order_keys_accept_and_progress(win, qtbot, demo) -> None:
    assert win.open_project(demo)
    proj = win.doc.project
    ex = win.doc.exemplar_id
    ids = [r.id for r in proj.images() if r.id != ex]
    n = len(proj.template)
    low = {ids[1]: (3, 0.05), ids[2]: (7, 0.2)}  # image -> (landmark, its low confidence)

    def conf(i, k):
        if i in low and k == low[i][0]:
            return low[i][1]
        return 0.9 - 0.01 * k

    run = _predict(proj, ex, conf)
    win._training_finished([run])
    assert win.review.items[0] == (ids[1], 3)  # least confident image first, its worst point
    assert win.review.items[n] == (ids[2], 7)  # then the next image's worst
    assert win.image_list.model.status(ids[0]) == "predicted"
    row = win.image_list.model.index(win.image_list.model.row_of(ids[1]))
    assert "predicted · E " in row.data() and row.data().endswith(" px")  # expected error, unit
    assert "lowest confidence 0.05" in row.data(Qt.ItemDataRole.ToolTipRole)
    qtbot.waitUntil(win.isActiveWindow, timeout=3000)

    qtbot.keyClick(win, Qt.Key.Key_Space)
    assert (win.doc.image_id, win.doc.landmark) == (ids[1], 3)
    wait_shown(qtbot, win, ids[1])
    p = proj.points(ids[1])[3]
    centre = win.canvas.vb.viewRect().center()  # zoomed in around the point under review
    assert abs(centre.x() - p.x) < 1 and abs(centre.y() - p.y) < 1
    assert win.canvas.vb.viewRect().width() < 128
    cur = win.review.tree.currentItem()  # the tree follows: image row open, point selected
    assert tuple(cur.data(0, Qt.ItemDataRole.UserRole)) == (ids[1], 3)
    qtbot.keyClick(win, Qt.Key.Key_Space)
    second = (win.doc.image_id, win.doc.landmark)
    assert second == win.review.items[1]
    qtbot.keyClick(win, Qt.Key.Key_Space, Qt.KeyboardModifier.ShiftModifier)
    assert (win.doc.image_id, win.doc.landmark) == (ids[1], 3)

    tree = win.review.tree
    assert tree.topLevelItem(0).text(0) == f"{win.doc.record(ids[1]).name} ({n})"
    qtbot.keyClick(win, Qt.Key.Key_Return)  # accept, and on to the next in the same order
    assert tree.topLevelItem(0).text(0) == f"{win.doc.record(ids[1]).name} ({n - 1})"
    assert proj.points(ids[1])[3].status is Status.ACCEPTED
    assert proj.points(ids[1])[3].confidence == pytest.approx(0.05)  # kept with the point
    assert (win.doc.image_id, win.doc.landmark) == second
    s = win.doc.review_summary()
    assert (s.points_reviewed, s.points_total, s.images_reviewed) == (1, 3 * n, 0)
    assert f"1 of {3 * n} landmarks" in win.review.progress_label.text()

    win.doc.set_image(ids[1])
    qtbot.keyClick(win, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)  # accept all
    assert all(q.status is Status.ACCEPTED for q in proj.points(ids[1]))
    assert win.doc.image_status(ids[1]) == "reviewed"
    assert win.doc.review_summary().images_reviewed == 1
    assert all(i != ids[1] for i, _ in win.review.items)
    names = [tree.topLevelItem(r).text(0) for r in range(tree.topLevelItemCount())]
    assert names == [f"{win.doc.record(i).name} ({n})" for i in (ids[2], ids[0])]
    win.image_list.search.setFocus()  # Return typed in the filter box accepts nothing
    qtbot.waitUntil(win.image_list.search.hasFocus, timeout=2000)
    win.doc.set_image(ids[2])
    qtbot.keyClick(win.image_list.search, Qt.Key.Key_Return)
    assert all(q.status is Status.PREDICTED for q in proj.points(ids[2]))
    win.canvas.view.setFocus()
    qtbot.keyClick(win, Qt.Key.Key_N)  # names off and on
    assert not win.canvas.markers[0].label_item.isVisible()
    qtbot.keyClick(win, Qt.Key.Key_N)
    assert win.canvas.markers[0].label_item.isVisible()
    win.a_undo.trigger()  # accept-all is one step: the whole image is back to predicted
    pts = proj.points(ids[1])
    assert [q.status for q in pts].count(Status.PREDICTED) == n - 1
    assert pts[3].status is Status.ACCEPTED
    assert tree.topLevelItem(0).text(0) == f"{win.doc.record(ids[1]).name} ({n - 1})"  # back
    assert win.review.items[0][0] == ids[1] and len(win.review.items) == 3 * n - 1

    # a click corrects the current predicted landmark in place (CORRECTED); undo restores it
    win.doc.set_image(ids[2])
    wait_shown(qtbot, win, ids[2])
    win.select_landmark(5)
    old = proj.points(ids[2])[5]
    click_image(qtbot, win, 70.0, 90.0)
    new = proj.points(ids[2])[5]
    assert new.status is Status.CORRECTED
    assert abs(new.x - 70.0) <= pixel_tolerance(win) and abs(new.y - 90.0) <= pixel_tolerance(win)
    win.a_undo.trigger()
    assert proj.points(ids[2])[5] == old


def test_wheel_zooms_at_cursor_drag_pans_and_places_nothing(win, qtbot, demo) -> None:
    assert win.open_project(demo)
    ids = [r.id for r in win.doc.records()]
    target = ids[1]
    win.doc.set_image(target)
    wait_shown(qtbot, win, target)
    c = win.canvas
    vp = c.view.viewport()
    x, y = 40.0, 60.0
    pos = c.view_to_widget(x, y)
    z0 = c.zoom_factor()
    ev = QWheelEvent(QPointF(pos), QPointF(vp.mapToGlobal(pos)), QPoint(0, 0), QPoint(0, 240),
                     Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                     Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(vp, ev)
    qtbot.wait(30)
    assert c.zoom_factor() > 1.5 * z0
    gx, gy = c.widget_to_view(pos)
    assert abs(gx - x) < 1.0 and abs(gy - y) < 1.0  # the point under the cursor stays put

    n = win.undo_stack.count()
    before = win.doc.project.points(target)
    r0 = c.vb.viewRect()
    drag_image(qtbot, win, 30.0, 30.0, 50.0, 45.0)  # empty spot: pans
    r1 = c.vb.viewRect()
    assert abs((r0.x() - r1.x()) - 20.0) < 2.0 and abs((r0.y() - r1.y()) - 15.0) < 2.0
    assert win.undo_stack.count() == n and win.doc.project.points(target) == before

    qtbot.waitUntil(win.isActiveWindow, timeout=3000)
    qtbot.keyClick(win, Qt.Key.Key_PageDown)
    assert win.doc.image_id == ids[2]
    qtbot.keyClick(win, Qt.Key.Key_PageUp)
    assert win.doc.image_id == ids[1]
    qtbot.keyClick(win, Qt.Key.Key_BracketRight)
    assert win.doc.landmark == 1


def test_recent_project_and_template_change_before_annotation(win, qtbot, tmp_path,
                                                              monkeypatch) -> None:
    from test_gui_helpers import write_phantom_folder

    from lmk_studio.core.templates import LandmarkDef, Template
    from lmk_studio.gui import main_window as mw

    folder = tmp_path / "imgs"
    write_phantom_folder(folder, n=2)
    t = Template("two", [LandmarkDef("a"), LandmarkDef("b")])
    path = tmp_path / "p.lmk"
    assert win.create_project(path, t, folder)
    win.close_project()
    item = win.start.recent.item(0)
    assert item.toolTip() == str(path.resolve())
    win.start.recent.itemActivated.emit(item)  # what a double-click / Enter does
    assert win.doc.project is not None and win.doc.names() == ["a", "b"]

    def edited(self):  # the user renames "b" and adds a third landmark, then presses OK
        self.table.item(1, 0).setText("b renamed")
        if self.table.rowCount() == 2:
            self.add_row("c")
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(mw.TemplateEditor, "exec", edited)
    win.edit_template()
    assert win.doc.names() == ["a", "b renamed", "c"]
    assert len(win.canvas.markers) == 3 and win.template_panel.table.rowCount() == 3
    wait_shown(qtbot, win)
    win.place(10.0, 12.0)  # once a point exists the template is locked, and the user told why
    monkeypatch.setattr(mw.TemplateEditor, "exec", lambda self: (
        self.table.item(0, 0).setText("a2"), QDialog.DialogCode.Accepted)[1])
    win.edit_template()
    assert win.doc.names() == ["a", "b renamed", "c"]
    assert "cannot change the template" in (win.last_error or "")


def test_use_another_image_as_exemplar_and_undo(win, qtbot, demo) -> None:
    assert win.open_project(demo)
    proj = win.doc.project
    old = win.doc.exemplar_id
    other = [r.id for r in proj.images() if r.id != old][0]
    old_pts = proj.points(old)
    win.doc.set_image(other)
    wait_shown(qtbot, win, other)
    win.place(30.0, 40.0)  # a human label on the other image: CORRECTED
    assert proj.points(other)[0].status is Status.CORRECTED
    win.a_exemplar.trigger()
    assert proj.exemplar_id == other and win.doc.exemplar_id == other
    assert proj.points(other)[0].status is Status.EXEMPLAR
    assert proj.points(old)[0].status is Status.CORRECTED  # the old one's labels are kept
    assert win.image_list.model.status(other) == "exemplar"
    win.a_undo.trigger()
    assert proj.exemplar_id == old
    assert proj.points(old) == old_pts
    assert proj.points(other)[0].status is Status.CORRECTED
