"""The image list triages by expected error (issue 11): the worst images stand out, not all in
red; worst-first order; the legend names the units."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("lmk_studio.core.store")

from PySide6.QtCore import Qt  # noqa: E402

from lmk_studio.core.points import LandmarkPoint, Source, Status  # noqa: E402


@pytest.fixture
def win(qtbot):
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    make_app()
    w = MainWindow()
    qtbot.addWidget(w)
    yield w
    w.close()


def test_list_colours_by_rank_sorts_worst_first_and_has_a_legend(win, qtbot, tmp_path) -> None:
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.gui.trust_legend import TRIAGE_COLORS

    assert win.open_project(write_demo_project(tmp_path / "d", n=11, size=(160, 128), seed=0))
    proj = win.doc.project
    ex = win.doc.exemplar_id
    ids = [r.id for r in win.doc.records() if r.id != ex]
    run = proj.start_run("classical", {"method": "test"})
    rows = []
    for k, i in enumerate(ids):
        e = 40.0 if k == 3 else 5.0 + k * 0.1     # one image much worse; the rest alike
        for j in range(len(proj.template)):
            rows.append((i, LandmarkPoint(j, 10.0 + j, 20.0, Status.PREDICTED, Source.STAGE1,
                                          0.1, e, run)))   # all low confidence: old list all red
    proj.record_predictions(run, rows)
    proj.set_points(rows)
    proj.finish_run(run, "finished")
    win._training_finished([run])
    il = win.image_list
    m = il.model
    colours = {i: m.data(m.index(m.row_of(i)), Qt.ItemDataRole.ForegroundRole).color().name()
               for i in ids}
    assert colours[ids[3]] == TRIAGE_COLORS["worst"]
    assert sum(c == TRIAGE_COLORS["worst"] for c in colours.values()) == 1
    assert sum(c == TRIAGE_COLORS["fine"] for c in colours.values()) >= 5
    text = m.data(m.index(m.row_of(ids[3])), Qt.ItemDataRole.DisplayRole)
    assert "E 40 px" in text
    il.order.setCurrentIndex(1)
    assert il.visible_ids()[0] == ids[3]
    assert il.visible_ids()[-1] == ex            # nothing to review: last
    il.order.setCurrentIndex(0)
    assert il.visible_ids()[0] == win.doc.records()[0].id
    assert "px" in il.legend.text() and "mm" in il.legend.text()
