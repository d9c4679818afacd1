"""Issue 12 items 1-2, driven as a user would offscreen: predictions stay in step with the
exemplar (the preview re-runs by itself after a drag; a trained run gets a banner with Re-run;
Del then Ctrl+Z changes nothing), and no job silently replaces better points (a worse run asks,
going back restores the earlier run, the runs table switches between runs and never touches a
corrected point)."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from runs_hooks import write_run  # noqa: E402
from test_gui_helpers import drag_image, main_window, wait_shown  # noqa: E402

from lmk_studio.core.points import Source, Status  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    with main_window(qtbot, size=(1300, 850)) as w:
        yield w


@pytest.fixture
def demo(tmp_path):
    from lmk_studio.core.phantoms import write_demo_project

    return write_demo_project(tmp_path / "demo", n=4, size=(160, 128), seed=0)


def _activate(win, qtbot) -> None:
    win.activateWindow()
    win.raise_()
    qtbot.waitUntil(win.isActiveWindow, timeout=3000)


def _show_exemplar(win, qtbot, index: int = 0):
    ex = win.doc.exemplar_id
    win.doc.set_image(ex)
    wait_shown(qtbot, win, ex)
    win.select_landmark(index)
    return ex, win.doc.points(ex)[index]


def test_an_exemplar_drag_reruns_the_preview_by_itself(win, qtbot, demo) -> None:
    assert win.open_project(demo)
    tp = win.training
    with qtbot.waitSignal(tp.finished, timeout=90_000) as first:
        win.run_preview()
    r1 = first.args[0][-1]
    assert not win.stale_banner.isVisible()
    ex, p = _show_exemplar(win, qtbot)
    _activate(win, qtbot)
    # the user drags the exemplar's first landmark: the preview follows without a click
    with qtbot.waitSignal(tp.finished, timeout=90_000) as again:
        drag_image(qtbot, win, p.x, p.y, p.x + 14, p.y + 8)
    proj = win.doc.project
    r2 = again.args[0][-1]
    assert r2 > r1 and proj.run(r2).kind == "classical"
    assert proj.points(ex)[0].x == pytest.approx(p.x + 14, abs=2)
    others = [r.id for r in proj.images() if r.id != ex]
    assert all(pt.run_id == r2 for i in others for pt in proj.points(i) if pt.placed)
    assert not win.stale_banner.isVisible()
    # both runs are kept and listed, the new one active
    qtbot.waitUntil(lambda: len(win.runs_panel.summaries) == 2, timeout=3000)
    assert [s.active for s in win.runs_panel.summaries] == [True, False]


def test_del_then_undo_keeps_stage1_and_an_edit_offers_a_rerun(win, qtbot, demo,
                                                                monkeypatch) -> None:
    from lmk_studio.core.store import Project

    with Project.open(demo) as proj:
        write_run(proj, "classical", 3.0, 0.5)
        s1 = write_run(proj, "stage1", 1.0, 0.7)
    assert win.open_project(demo)
    calls: list[tuple[str, str | None]] = []
    monkeypatch.setattr(win.training, "start",
                        lambda job, preset=None, **_kw: calls.append((job, preset)) or True)
    proj = win.doc.project
    ex, p = _show_exemplar(win, qtbot)
    _activate(win, qtbot)

    qtbot.keyClick(win, Qt.Key.Key_Delete)
    assert proj.points(ex)[0].status is Status.UNLABELLED
    qtbot.waitUntil(win.stale_banner.isVisible, timeout=5000)
    assert "Stage I" in win.stale_banner.label.text()
    assert not win.stale_banner.rerun.isEnabled()  # the exemplar is incomplete
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert proj.points(ex)[0].status is Status.EXEMPLAR
    qtbot.waitUntil(lambda: not win.stale_banner.isVisible(), timeout=5000)
    qtbot.wait(1000)
    assert calls == []  # nothing re-ran: the Stage I points are what they were
    others = [r.id for r in proj.images() if r.id != ex]
    assert all(pt.run_id == s1 and pt.source is Source.STAGE1
               for i in others for pt in proj.points(i) if pt.placed)

    # a real edit: the Stage I points are marked out of date, one click re-runs the chain
    wait_shown(qtbot, win, ex)
    drag_image(qtbot, win, p.x, p.y, p.x + 15, p.y)
    qtbot.waitUntil(lambda: win.stale_banner.isVisible()
                    and win.stale_banner.rerun.isEnabled(), timeout=5000)
    text = win.stale_banner.label.text()
    assert "older than your exemplar edit" in text and win.doc.names()[0] in text
    assert calls == []  # a trained run is never redone without asking
    qtbot.mouseClick(win.stale_banner.rerun, Qt.MouseButton.LeftButton)
    assert calls == [("classical", None)]
    assert win._chain == [("stage1", "quick")]


def test_a_worse_run_asks_and_the_runs_table_switches_back(win, qtbot, demo, tmp_path) -> None:
    from lmk_studio.core.store import Project

    with Project.open(demo) as proj:
        pre = write_run(proj, "classical", 2.0, 0.6)
        ex = proj.exemplar_id
        other = next(r.id for r in proj.images() if r.id != ex)
        proj.set_point(other, 1, 50.0, 40.0)  # a point the user corrected
    assert win.open_project(demo)
    tp = win.training
    spec = {"job": "stage1", "target": "runs_hooks:worse_stage1", "project": str(demo),
            "torch_threads": 1, "nice": 0, "log_path": str(tmp_path / "job.log")}
    with qtbot.waitSignal(tp.finished, timeout=60_000) as done:
        assert tp.start_spec(spec)
    bad = done.args[0][-1]
    proj = win.doc.project
    # the app asks (a sheet: the window keeps running); the user goes back to the preview
    qtbot.waitUntil(lambda: win.worse_question is not None and win.worse_question.isVisible(),
                    timeout=5000)
    box = win.worse_question
    assert "confidence" in box.text() and f"run {pre}" in box.text()
    assert proj.points(other)[0].run_id == bad  # nothing decided before the answer
    back = next(b for b in box.buttons() if b.text().startswith("Go back"))
    qtbot.mouseClick(back, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: proj.points(other)[0].run_id == pre, timeout=5000)
    # "go back": the preview's points are current again; the Stage I run is kept
    exp = proj.points(ex)
    assert all(pt.run_id == pre and pt.x == pytest.approx(exp[pt.index].x + 2.0)
               for pt in proj.points(other) if pt.status is Status.PREDICTED)
    assert proj.predictions(bad)
    assert proj.points(other)[1].status is Status.CORRECTED

    # both runs side by side; the user chooses the Stage I run anyway, then goes back
    rows = {s.run_id: s for s in win.runs_panel.summaries}
    assert rows[pre].active and not rows[bad].active
    assert rows[bad].agreement_px == pytest.approx(10.0, abs=0.01)
    assert rows[bad].mean_confidence == pytest.approx(0.0)
    win.runs_panel.select_run(bad)
    qtbot.mouseClick(win.runs_panel.use_button, Qt.MouseButton.LeftButton)
    pts = proj.points(other)
    assert pts[0].run_id == bad and pts[0].status is Status.PREDICTED
    assert pts[1].status is Status.CORRECTED and (pts[1].x, pts[1].y) == (50.0, 40.0)
    assert proj.points(ex)[0].status is Status.EXEMPLAR
    assert next(s for s in win.runs_panel.summaries if s.run_id == bad).active
    win.runs_panel.select_run(pre)
    qtbot.mouseClick(win.runs_panel.use_button, Qt.MouseButton.LeftButton)
    assert proj.points(other)[0].run_id == pre
