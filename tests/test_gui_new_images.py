"""New patients in the real window, offscreen: images copied into the project's folder are
offered in a banner; Add and predict adds them and predicts exactly those with the trained
Stage II (start points first), in the background job process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from test_gui_helpers import main_window  # noqa: E402
from tiny_presets import TINY_S2  # noqa: E402

from lmk_studio import cli  # noqa: E402
from lmk_studio.core.points import Source  # noqa: E402
from lmk_studio.gui.new_images import job_for_new_images  # noqa: E402

pytestmark = pytest.mark.gui



def test_the_newest_trained_method_predicts_new_images() -> None:
    assert job_for_new_images(["classical", "stage1", "stage2"]) == "predict-stage2"
    assert job_for_new_images(["classical", "stage1"]) == "predict-stage1"
    assert job_for_new_images(["classical"]) == "classical"
    assert job_for_new_images([]) is None


@pytest.fixture
def win(qtbot):
    with main_window(qtbot, auto_preview=False, auto_suggest=False) as w:
        yield w


def test_new_files_in_the_folder_are_offered_then_predicted_with_stage2(win, qtbot,
                                                                        tmp_path) -> None:
    from lmk_studio.core.phantoms import make_phantom_set, write_demo_project

    lmk = write_demo_project(tmp_path / "demo", n=4, size=(96, 96), seed=0)
    (tmp_path / "s2.json").write_text(json.dumps(TINY_S2), "utf-8")
    assert cli.main(["predict", str(lmk), "--method", "classical"]) == 0
    assert cli.main(["train", str(lmk), "--stage", "2", "--preset", str(tmp_path / "s2.json"),
                     "--device", "cpu"]) == 0
    assert win.open_project(lmk)
    before = {r.id for r in win.doc.records()}
    folder = Path(win.doc.records()[0].path).parent
    assert str(folder) in win.folder_watch.folders()

    staging = tmp_path / "staging"
    staging.mkdir()
    for k, ph in enumerate(make_phantom_set(3, size=(96, 96), seed=9)[1:]):
        cv2.imwrite(str(staging / f"new_patient_{k}.png"),
                    np.round(ph.image * 255).astype(np.uint8))
        shutil.move(staging / f"new_patient_{k}.png", folder / f"new_patient_{k}.png")
    banner = win.new_images_banner
    # the watcher reports it (or, on a file system without notifications, a scan finds it)
    qtbot.waitUntil(lambda: banner.isVisible() or bool(win.folder_watch.scan()), timeout=10_000)
    qtbot.waitUntil(banner.isVisible, timeout=5_000)
    assert "2 new image(s)" in banner.label.text() and "stage ii" in banner.label.text().lower()

    tp = win.training
    with qtbot.waitSignal(tp.finished, timeout=120_000):
        banner.add.click()
    assert not banner.isVisible()
    new = [r for r in win.doc.records() if r.id not in before]
    assert sorted(r.name for r in new) == ["new_patient_0.png", "new_patient_1.png"]
    proj = win.doc.project
    kinds = [r.kind for r in sorted(proj.runs(), key=lambda r: r.id)]
    assert kinds[-2:] == ["classical", "stage2-predict"]  # no Stage I model: the preview starts
    for rec in new:
        pts = proj.points(rec.id)
        assert all(p.placed and p.source is Source.STAGE2 for p in pts)
    # nothing new is offered again for the files now in the project
    assert win.folder_watch.scan() == []


def test_frames_of_a_multi_frame_file_count_as_that_file(tmp_path) -> None:
    """The project holds x.dcm#1, x.dcm#2: x.dcm in the folder is not new."""
    from lmk_studio.gui.new_images import FolderWatcher

    (tmp_path / "x.dcm").write_bytes(b"")
    assert FolderWatcher._key(tmp_path / "x.dcm#2") == (tmp_path / "x.dcm").resolve()
    assert FolderWatcher._key(tmp_path / "y.png") == (tmp_path / "y.png").resolve()
