"""'Retrain with my corrections' in the real window, offscreen: it says what the chain will do
(the corrected image becomes an exemplar; preview, Stage I, Stage II) and its cost before it
starts, starts nothing when the user declines, and runs the whole chain when they agree."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from test_gui_helpers import main_window  # noqa: E402

from lmk_studio import cli  # noqa: E402
from lmk_studio.core.points import LandmarkPoint, Source, Status  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    with main_window(qtbot, auto_preview=False, auto_suggest=False) as w:
        yield w


def test_retrain_shows_the_plan_then_runs_the_whole_chain(win, qtbot, tmp_path) -> None:
    from lmk_studio.core.phantoms import make_phantom_set, write_demo_project

    lmk = write_demo_project(tmp_path / "demo", n=4, size=(96, 96), seed=0)
    assert cli.main(["predict", str(lmk), "--method", "classical"]) == 0
    assert win.open_project(lmk)
    proj = win.doc.project
    target = [r for r in win.doc.records() if r.id != proj.exemplar_id][0]
    truth = make_phantom_set(4, size=(96, 96), seed=0)[1].points  # demo image 1's true points
    rows = [(target.id, LandmarkPoint(j, float(x), float(y), Status.CORRECTED, Source.MANUAL))
            for j, (x, y) in enumerate(truth)]
    proj.set_points(rows)
    win.doc.invalidate(None)
    tp = win.training
    idx = tp.preset_combo.findData("quick")
    assert idx >= 0
    tp.preset_combo.setCurrentIndex(idx)

    seen: list[str] = []
    win.confirm_plan = lambda words: seen.append(words) is not None   # declines
    win.retrain()
    assert seen and "2 trusted" in seen[0] and "Stage II" in seen[0], seen
    assert not tp.is_running()

    win.confirm_plan = lambda words: True
    win.retrain()
    assert tp.is_running() and tp.current_job == "all"
