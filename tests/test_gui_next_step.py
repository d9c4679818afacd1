"""Issue 12 item 5: the next step is always in view. The demo opens with the exemplar placed and
no predictions: the Review panel offers "Run the preview"; after it, "Press Space to review" and
"Train for better accuracy" (which opens the Training panel on the whole pipeline); when every
point is reviewed, Export. Driven offscreen by clicking the panel's button."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from test_gui_helpers import main_window  # noqa: E402

from lmk_studio.core.points import Status  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    with main_window(qtbot) as w:
        yield w


def test_empty_review_panel_offers_the_preview_then_review_then_training(win, qtbot,
                                                                        tmp_path) -> None:
    from lmk_studio.core.phantoms import write_demo_project

    assert win.open_project(write_demo_project(tmp_path / "demo", n=3, size=(160, 128), seed=0))
    rv = win.review
    assert rv.next_button.isVisible() and rv.next_button.text() == "Run the preview"
    assert "No predictions yet" in rv.next_label.text()
    with qtbot.waitSignal(win.training.finished, timeout=90_000):
        qtbot.mouseClick(rv.next_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "job is running" in rv.next_label.text(), timeout=2000)
        assert not rv.next_button.isVisible()
    qtbot.waitUntil(lambda: "Press Space to review" in rv.next_label.text(), timeout=5000)
    assert rv.next_button.text().startswith("Train for better accuracy")
    qtbot.mouseClick(rv.next_button, Qt.MouseButton.LeftButton)
    assert win.dock_training.isVisible() and win.training.selected_job() == "all"
    assert "Stage I ~" in win.training.preset_info.text()  # the time, before Start
    assert not win.training.is_running()  # nothing starts without the user's Start

    # every point accepted: the next step is the export
    proj = win.doc.project
    for iid, pts in proj.all_points().items():
        for p in pts:
            if p.status is Status.PREDICTED:
                proj.set_status(iid, p.index, Status.ACCEPTED)
    win.doc.invalidate(None)
    assert rv.next_button.text() == "Export…" and "reviewed" in rv.next_label.text()


def test_an_incomplete_exemplar_says_so_and_leads_back_to_it(win, qtbot, tmp_path) -> None:
    from lmk_studio.core.phantoms import write_demo_project

    path = write_demo_project(tmp_path / "demo", n=3, size=(160, 128), seed=0)
    assert win.open_project(path)
    ex = win.doc.exemplar_id
    win.doc.project.clear_point(ex, 0)
    win.doc.invalidate(ex)
    other = next(r.id for r in win.doc.records() if r.id != ex)
    win.doc.set_image(other)
    rv = win.review
    assert "Finish the exemplar" in rv.next_label.text()
    qtbot.mouseClick(rv.next_button, Qt.MouseButton.LeftButton)
    assert win.doc.image_id == ex and not rv.next_button.isVisible()
