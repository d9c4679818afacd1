"""What goes wrong, as the user sees it: cancelling a real training mid-way, a training process
that dies (the window survives and says why), an image that turns unreadable or vanishes (said,
the rest usable), and a failed store write (shown in words, nothing half-done on the undo stack).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("lmk_studio.core.store")
pytest.importorskip("lmk_studio.core.phantoms")
pytest.importorskip("lmk_studio.gui.training_panel")

from PySide6.QtWidgets import QMessageBox  # noqa: E402
from test_gui_helpers import click_image, wait_shown  # noqa: E402

from lmk_studio.core.errors import ProjectError  # noqa: E402
from lmk_studio.core.points import Status  # noqa: E402

pytestmark = pytest.mark.gui

LONG_STAGE1 = {"name": "long", "start": "learned", "torch_threads": 1,
               "coarse": {"size": [48, 48], "backbone": "small_cnn", "width": 4, "d_model": 16,
                          "heads": 2, "n_layers": 1, "global_type": "classical", "epochs": 400,
                          "steps_per_epoch": 4, "batch": 2, "lr": 1e-3, "eval_every": 50,
                          "sigma": 2.0}}


@pytest.fixture
def win(qtbot):
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    make_app()
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    yield w
    w.close()


@pytest.fixture
def demo(tmp_path):
    from lmk_studio.core.phantoms import write_demo_project

    return write_demo_project(tmp_path / "démo", n=5, size=(160, 128), seed=0)


def _error_texts(win) -> list[str]:
    return [b.text() for b in win.findChildren(QMessageBox) if b.isVisible()]


def test_cancel_mid_training_keeps_the_window_and_the_points(win, qtbot, demo, tmp_path) -> None:
    assert win.open_project(demo)
    tp = win.training
    before = win.doc.project.all_points()
    preset = tmp_path / "long.json"
    preset.write_text(json.dumps(LONG_STAGE1), encoding="utf-8")
    trained = []
    said: list[str] = []
    win.statusBar().messageChanged.connect(said.append)
    tp.progress.connect(lambda ev: trained.append(ev) if ev.stage != "job" else None)
    assert tp.start("stage1", preset=str(preset), device="cpu")
    qtbot.waitUntil(lambda: len(trained) >= 2, timeout=90_000)  # really training now
    with qtbot.waitSignal(tp.cancelled, timeout=15_000):
        tp.cancel()
    assert not tp.is_running()
    runs = [r for r in win.doc.project.runs() if r.kind == "stage1"]
    assert runs and runs[-1].status == "cancelled"
    assert win.doc.project.all_points() == before  # a cancelled run writes no points
    assert any("cancelled" in m.lower() for m in said)
    wait_shown(qtbot, win)  # the window still works: show and edit
    assert win.isVisible()


def test_training_process_crash_is_said_and_the_window_survives(win, qtbot, demo) -> None:
    pytest.importorskip("test_process")  # the crashing job lives with the process tests
    assert win.open_project(demo)
    tp = win.training
    spec = {"project": str(demo), "job": "stage1", "target": "test_process:hook_run_then_crash",
            "torch_threads": 1, "nice": 0}
    with qtbot.waitSignal(tp.failed, timeout=60_000) as blocker:
        assert tp.start_spec(spec)
    msg = blocker.args[0]
    assert "SIGKILL" in msg or "killed" in msg
    assert win.last_error is not None and msg in win.last_error
    assert any(msg in t and "log" in t.lower() for t in _error_texts(win))
    runs = win.doc.project.runs()
    assert runs[-1].kind == "stage1" and runs[-1].status == "failed"  # not left "running"
    # the window goes on: the next job (the classical preview) runs and its points arrive
    with qtbot.waitSignal(tp.finished, timeout=60_000):
        win.run_preview()
    pts = win.doc.project.all_points()
    assert any(p.status is Status.PREDICTED for i, ps in pts.items()
               if i != win.doc.exemplar_id for p in ps)


def test_unreadable_and_missing_images_are_reported_rest_usable(win, qtbot, demo) -> None:
    assert win.open_project(demo)
    wait_shown(qtbot, win)
    recs = win.doc.records()
    bad, gone, good = recs[2], recs[3], recs[4]
    bad.path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupted after it was added
    gone.path.unlink()
    win.doc.set_image(bad.id)
    qtbot.waitUntil(lambda: bad.id in win.image_list.model.problems, timeout=10_000)
    assert bad.path.name in win.statusBar().currentMessage()
    assert win.image_list.model.status(bad.id) == "unreadable"
    assert win.shown_image_id is None and win.canvas.pixels is None
    click_image(qtbot, win, 40.0, 40.0)  # nothing to click on: no point is invented
    assert win.doc.project.points(bad.id)[0].status is Status.UNLABELLED
    win.doc.set_image(gone.id)  # deleted while the project was open: found out, then said
    qtbot.waitUntil(lambda: win.doc.record(gone.id).missing, timeout=10_000)
    assert win.image_list.model.status(gone.id) == "missing"
    assert win.image_list.model.status(bad.id) == "unreadable"  # still known
    win.doc.set_image(good.id)
    win.doc.set_image(gone.id)
    assert "missing" in win.statusBar().currentMessage()
    win.doc.set_image(good.id)  # the rest is usable
    wait_shown(qtbot, win, good.id)
    click_image(qtbot, win, 40.0, 50.0)
    p = win.doc.project.points(good.id)[win.doc.landmark - 1 if win.doc.landmark else 0]
    assert p.status is Status.CORRECTED


def test_failed_store_write_is_shown_and_not_kept_on_the_undo_stack(win, qtbot, demo,
                                                                     monkeypatch) -> None:
    assert win.open_project(demo)
    recs = win.doc.records()
    win.doc.set_image(recs[1].id)
    wait_shown(qtbot, win, recs[1].id)
    proj = win.doc.project

    def disk_full(*_a, **_k):
        raise ProjectError(f"{proj.path}: could not save landmark 0: database or disk is full")

    monkeypatch.setattr(proj, "set_point", disk_full)
    n = win.undo_stack.count()
    click_image(qtbot, win, 50.0, 60.0)
    assert win.undo_stack.count() == n  # the failed edit is not an undo step
    assert "disk is full" in (win.last_error or "")
    assert any("disk is full" in t for t in _error_texts(win))
    monkeypatch.undo()
    assert proj.points(recs[1].id)[win.doc.landmark].status is Status.UNLABELLED
    click_image(qtbot, win, 50.0, 60.0)  # once the disk has room, the same click works
    assert win.undo_stack.count() == n + 1
