"""Annotating in the real window, offscreen: create a project through the new-project dialog's
path (a corrupt image in the folder is reported, the rest usable), place every exemplar landmark
with mouse clicks, drag one (one undo step), mark absent, undo/redo against the store, calibrate
with two clicks, view controls and the status bar, export CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("lmk_studio.core.store")
pytest.importorskip("lmk_studio.core.phantoms")

from PySide6.QtCore import Qt  # noqa: E402
from test_gui_helpers import (  # noqa: E402
    click_image,
    drag_image,
    pixel_tolerance,
    wait_shown,
    write_phantom_folder,
)

from lmk_studio.core.phantoms import phantom_template  # noqa: E402
from lmk_studio.core.points import Status  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    make_app()
    w = MainWindow()
    w.auto_preview = False  # this file tests annotation only; the loop test covers the preview
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    yield w
    w.close()


def _activate(win, qtbot) -> None:
    """Keyboard shortcuts need the main window active (a message box takes the focus)."""
    win.activateWindow()
    win.raise_()
    qtbot.waitUntil(win.isActiveWindow, timeout=3000)


def _new_project(win, qtbot, tmp_path, broken: bool = True):
    from lmk_studio.gui.start_screen import CUSTOM, NewProjectDialog

    folder = tmp_path / "röntgen images"
    truth = write_phantom_folder(folder, n=4, broken=broken)
    dlg = NewProjectDialog(win)
    dlg.images.setText(str(folder))
    assert dlg.project.text().endswith("röntgen images.lmk")  # suggested beside the folder
    dlg.custom = phantom_template()
    dlg.template.setCurrentIndex(dlg.template.findData(CUSTOM))
    images, template, path = dlg.values()
    assert win.create_project(path, template, images)
    _activate(win, qtbot)
    return truth, path


def test_create_then_place_every_landmark_by_clicking(win, qtbot, tmp_path) -> None:
    truth, path = _new_project(win, qtbot, tmp_path)
    # the corrupt file is reported by name and skipped; the four phantoms are usable
    assert [p.name for p, _ in win.last_faults] == ["ph_99_broken.png"]
    from PySide6.QtWidgets import QMessageBox

    msgs = [b.text() for b in win.findChildren(QMessageBox) if b.isVisible()]
    assert any("ph_99_broken.png" in m and "skipped" in m for m in msgs), msgs
    for b in win.findChildren(QMessageBox):
        b.close()
    _activate(win, qtbot)
    assert [r.name for r in win.doc.records()] == [f"ph_{i:02d}.png" for i in range(4)]
    assert win.doc.exemplar_id is None
    wait_shown(qtbot, win)
    first = win.doc.image_id
    n = win.doc.n_landmarks
    tol = pixel_tolerance(win)
    for k in range(n):
        assert win.doc.landmark == k  # each click advances to the next unplaced landmark
        click_image(qtbot, win, *truth[0][k])
    pts = win.doc.project.points(first)
    assert win.doc.exemplar_id == first
    assert all(p.status is Status.EXEMPLAR for p in pts)
    got = np.array([[p.x, p.y] for p in pts])
    assert np.abs(got - truth[0]).max() <= tol
    assert win.undo_stack.count() == n
    assert win.doc.exemplar_complete()
    click_image(qtbot, win, 3.0, 3.0)  # a stray click never moves a placed point
    assert win.undo_stack.count() == n and win.doc.project.points(first) == pts
    assert "drag it" in win.statusBar().currentMessage()
    assert f"Exemplar {n}/{n}" in win.progress_label.text()

    # a drag moves one point and is ONE undo step; undo/redo go through the store
    x0, y0 = truth[0][2]
    drag_image(qtbot, win, x0, y0, x0 + 9, y0 + 6)
    moved = win.doc.project.points(first)[2]
    assert abs(moved.x - (x0 + 9)) <= 2 * tol and abs(moved.y - (y0 + 6)) <= 2 * tol
    assert moved.status is Status.EXEMPLAR
    assert win.undo_stack.count() == n + 1
    win.a_undo.trigger()
    back = win.doc.project.points(first)[2]
    assert abs(back.x - x0) <= tol and abs(back.y - y0) <= tol
    win.a_redo.trigger()
    assert win.doc.project.points(first)[2] == moved

    # selecting a row of the landmark table makes it current and centres the view on it
    win.canvas.zoom(3.0)
    win.template_panel.table.selectRow(5)
    assert win.doc.landmark == 5
    centre = win.canvas.vb.viewRect().center()
    assert abs(centre.x() - truth[0][5][0]) < 1.0 and abs(centre.y() - truth[0][5][1]) < 1.0
    win.canvas.fit()

    # X marks the current landmark absent; Ctrl+Z brings the point back
    win.select_landmark(4)
    qtbot.keyClick(win, Qt.Key.Key_X)
    assert win.doc.project.points(first)[4].status is Status.ABSENT
    assert not win.canvas.markers[4].isVisible()
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert win.doc.project.points(first)[4].status is Status.EXEMPLAR
    assert win.canvas.markers[4].isVisible()

    # survives a reopen: nothing needed saving
    win.close_project()
    assert win.open_project(path)
    assert win.doc.project.points(first)[2] == moved


def test_view_controls_status_bar_and_calibration(win, qtbot, tmp_path) -> None:
    truth, _ = _new_project(win, qtbot, tmp_path, broken=False)
    wait_shown(qtbot, win)
    c = win.canvas
    qtbot.keyClick(win, Qt.Key.Key_1)  # 1:1
    assert c.zoom_factor() == pytest.approx(1.0, rel=0.02)
    qtbot.keyClick(win, Qt.Key.Key_F)  # fit: the whole 128x160 image in view
    r = c.vb.viewRect()
    assert r.width() >= 127 and r.height() >= 159
    z = c.zoom_factor()
    c.zoom(2.0)
    assert c.zoom_factor() == pytest.approx(2 * z, rel=0.02)
    info = c.describe_position(10.2, 20.4)
    value = float(c.pixels[20, 10])
    assert info.startswith("x 10.2  y 20.4 px") and f"value {value:.0f}" in info
    assert "mm" not in info  # PNG: no spacing, so no mm claimed

    # two-point calibration: 50 px apart = 10 mm -> 0.2 mm/px for the project (fit first: at 2x
    # zoom, whether (30, 40) is in view depends on how wide the docks leave the canvas)
    qtbot.keyClick(win, Qt.Key.Key_F)
    win.ask_distance_mm = lambda dist_px: 10.0
    qtbot.keyClick(win, Qt.Key.Key_C)
    assert c.mode == "calibrate"
    n_before = win.undo_stack.count()
    click_image(qtbot, win, 30.0, 40.0)
    click_image(qtbot, win, 30.0, 90.0)
    qtbot.waitUntil(lambda: win.doc.spacing() is not None, timeout=3000)
    sp = win.doc.spacing()
    tol = pixel_tolerance(win)
    assert sp[0] == pytest.approx(10.0 / 50.0, rel=2 * tol / 50)
    assert c.mode == "place"
    assert win.doc.project.points(win.doc.image_id)[0].status is Status.UNLABELLED  # no point
    assert "mm" in c.describe_position(10.0, 20.0)
    assert win.undo_stack.count() == n_before + 1
    win.a_undo.trigger()
    assert win.doc.spacing() is None
    assert win.doc.project.calibration(None) is None


def test_export_csv_and_help(win, qtbot, tmp_path) -> None:
    truth, _ = _new_project(win, qtbot, tmp_path, broken=False)
    wait_shown(qtbot, win)
    for k in range(win.doc.n_landmarks):
        click_image(qtbot, win, *truth[0][k])
    out = tmp_path / "exports ü" / "points.csv"
    out.parent.mkdir()
    assert win.export("CSV, one row per landmark", out, True, "px")
    with open(out, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == win.doc.n_landmarks
    assert {r["status"] for r in rows} == {"exemplar"}
    r0 = rows[0]
    p0 = win.doc.project.points(win.doc.exemplar_id)[0]
    assert float(r0["x_px"]) == pytest.approx(p0.x) and float(r0["y_px"]) == pytest.approx(p0.y)
    # an export into a missing folder is refused in words, the project untouched
    assert not win.export("JSON", tmp_path / "no such dir" / "x.json", False, "px")
    assert "no such dir" in (win.last_error or "")
    from lmk_studio.gui.export_dialog import ExportDialog

    ed = ExportDialog(win.doc.project, win, spacing_known=False)
    ed.fmt.setCurrentText("COCO keypoints (JSON)")
    fmt, path, reviewed, units = ed.choice()
    assert path.suffix == ".json" and not reviewed and units == "px"
    assert not ed.mm.isEnabled()  # no spacing anywhere: mm is not offered
    ed.reviewed.setChecked(True)
    assert ed.choice()[2] is True
    ed.close()
    dlg = win.show_help()
    keys = {row[1]: row[2] for row in dlg.rows}
    assert keys["Mark landmark absent"] == "X"
    assert "Ctrl+Z" in keys["Undo"]
    dlg.close()
