"""The app around the canvas: `lmk-studio --demo`, settings and recent projects kept under the
test home, 16-bit DICOM window/level and mm in the status bar, the image list's filter and lazy
thumbnails, Stage I / Stage II overlays, the template editor."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("lmk_studio.core.store")
pytest.importorskip("lmk_studio.core.phantoms")

from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402
from test_gui_helpers import wait_shown  # noqa: E402

from lmk_studio.core.errors import LmkError  # noqa: E402
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
    yield w
    w.close()


@pytest.fixture
def demo(tmp_path):
    from lmk_studio.core.phantoms import write_demo_project

    return write_demo_project(tmp_path / "démo", n=5, size=(160, 128), seed=0)


def test_demo_flag_writes_then_reuses_the_demo_project(qtbot, monkeypatch) -> None:
    from lmk_studio import cli
    from lmk_studio.core.paths import data_dir
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # run_app installs its own
    make_app()
    seen = []

    def close_when_open() -> None:
        for w in QApplication.topLevelWidgets():
            if isinstance(w, MainWindow) and w.doc.project is not None and w.isVisible():
                seen.append((w.doc.project.path, len(w.doc.records()), w.doc.exemplar_id))
                w.close()
                return
        QTimer.singleShot(50, close_when_open)

    try:
        for _ in range(2):
            QTimer.singleShot(50, close_when_open)
            assert cli.main(["--demo"]) == 0
    finally:
        root = logging.getLogger("lmk_studio")
        for h in list(root.handlers):
            if isinstance(h, logging.FileHandler):
                root.removeHandler(h)
                h.close()
    demo_files = sorted((data_dir() / "demo").glob("*.lmk"))
    assert len(demo_files) == 1
    assert [s[0] for s in seen] == [demo_files[0], demo_files[0]]  # written once, reused
    assert seen[0][1] == 24 and seen[0][2] is not None  # 24 phantoms, exemplar annotated


def test_settings_and_recent_projects_live_under_the_test_home(win, demo, tmp_path) -> None:
    from lmk_studio.core.paths import config_dir
    from lmk_studio.gui import settings

    assert settings.settings_path().parent == config_dir()
    assert str(tmp_path.parent) in str(config_dir()) or "userdirs" in str(config_dir())
    assert win.open_project(demo)
    assert settings.recent_projects()[0] == demo.resolve()
    win.close_project()
    assert win.start.recent.count() >= 1
    assert win.start.recent.item(0).toolTip() == str(demo.resolve())
    win.resize(1111, 777)
    win.a_stage2.setChecked(True)
    win.a_names.setChecked(False)
    win.close()
    assert settings.get_value("window/geometry") is not None
    assert settings.settings_path().exists()
    from lmk_studio.gui.main_window import MainWindow

    again = MainWindow()  # the view choices come back with the next window
    assert again.a_stage2.isChecked() and not again.a_names.isChecked()
    assert not again.a_stage1.isChecked() and again.a_hist.isChecked()
    again.close()


def _write_dicom(path, rows=96, cols=80):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.1, 0.1]
    ds.WindowCenter = 2000
    ds.WindowWidth = 1000
    yy, xx = np.mgrid[0:rows, 0:cols]
    px = (1000 + 20 * xx + 10 * yy).astype(np.uint16)
    ds.PixelData = px.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return px


def test_dicom_16bit_window_level_and_mm(win, qtbot, tmp_path) -> None:
    from lmk_studio.core.phantoms import phantom_template

    folder = tmp_path / "dicom"
    folder.mkdir()
    px = _write_dicom(folder / "ceph 1.dcm")
    assert win.create_project(tmp_path / "d.lmk", phantom_template(), folder)
    wait_shown(qtbot, win)
    c = win.canvas
    assert c.levels() == pytest.approx((1500.0, 2500.0))  # the file's window, not min/max
    assert win.doc.spacing() == pytest.approx((0.1, 0.1))
    info = c.describe_position(30.0, 40.0)
    assert f"value {int(px[40, 30])}" in info and "(3.00, 4.00) mm" in info
    c.hist.setLevels(1200.0, 1800.0)  # dragging the histogram's level bars
    assert c.image_item.levels == pytest.approx([1200.0, 1800.0])
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=3000)
    qtbot.keyClick(win, Qt.Key.Key_R)  # back to the file's window
    assert c.levels() == pytest.approx((1500.0, 2500.0))


def test_image_list_filter_thumbnails_and_stage_overlays(win, qtbot, demo) -> None:
    assert win.open_project(demo)
    proj = win.doc.project
    ids = [r.id for r in win.doc.records()]
    ex = win.doc.exemplar_id
    run = proj.start_run("stage1", {"preset": "test overlay"})
    rows = [(i, LandmarkPoint(k, 10.0 + k, 20.0 + k, Status.PREDICTED, Source.STAGE1, 0.9,
                              1.0, run)) for i in ids if i != ex for k in range(len(proj.template))]
    proj.record_predictions(run, rows)
    proj.set_points(rows)
    proj.finish_run(run, "finished")
    win._training_finished([run])  # what the training panel's signal triggers
    il = win.image_list
    qtbot.waitUntil(lambda: len(il.model.thumbs) == len(ids), timeout=15_000)  # painted rows
    il.filter.setCurrentText("Predicted (to review)")
    assert il.visible_ids() == [i for i in ids if i != ex]
    il.filter.setCurrentText("Reviewed")
    assert il.visible_ids() == [ex]
    il.filter.setCurrentText("All images")
    il.search.setText("003")
    assert [win.doc.record(i).name for i in il.visible_ids()] == ["phantom_003.png"]
    il.search.clear()
    target = ids[1]
    win.doc.set_image(target)
    wait_shown(qtbot, win, target)
    assert "stage1" not in win.canvas.overlays or not win.canvas.overlays["stage1"].isVisible()
    win.a_stage1.setChecked(True)
    ov = win.canvas.overlays["stage1"]
    assert ov.isVisible()
    xs, ys = ov.getData()
    assert list(xs) == [10.0 + k for k in range(len(proj.template))]
    win.a_stage2.setChecked(True)  # no Stage II run yet: nothing drawn, nothing invented
    assert "stage2" not in win.canvas.overlays or not win.canvas.overlays["stage2"].isVisible()
    tip = win.canvas.markers[0].toolTip()
    assert "confidence 0.90" in tip and "predicted" in tip


def test_template_editor_edits_and_validates(qtbot) -> None:
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.template_editor import TemplateEditor

    make_app()
    ed = TemplateEditor()
    qtbot.addWidget(ed)
    for _ in range(3):
        ed.add_row()
    ed.table.item(0, 0).setText("sella")
    ed.table.item(1, 0).setText("nasion")
    ed.table.selectRow(1)
    ed.move_row(-1)
    t = ed.template()
    assert t.names == ["nasion", "sella", "landmark 3"]
    ed.table.item(2, 0).setText("sella")  # duplicate names are refused in words
    with pytest.raises(LmkError):
        ed.template()
    ed.accept()
    assert "sella" in ed.error.text() and ed.result() == 0
