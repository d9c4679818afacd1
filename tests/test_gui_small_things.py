"""Issue 12 items 7-8, the smaller things: Resume is enabled only when there is something to
resume, quitting says what it is doing, and `lmk-studio info /x/ceph` finds the ceph.lmk that
`lmk-studio new /x/ceph` wrote."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


@pytest.fixture
def demo(tmp_path):
    from lmk_studio.core.phantoms import write_demo_project

    return write_demo_project(tmp_path / "demo", n=3, size=(160, 128), seed=0)


@pytest.fixture
def win(qtbot):
    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    make_app()
    w = MainWindow()
    w.auto_preview = False
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def test_resume_only_when_a_stopped_training_has_a_checkpoint(win, demo) -> None:
    from lmk_studio.core.store import Project
    from lmk_studio.engine.checkpoints import model_dir

    assert win.open_project(demo)
    tp = win.training
    tp.job_combo.setCurrentIndex(tp.job_combo.findData("stage1"))
    assert tp.start_button.isEnabled() and not tp.resume_button.isEnabled()
    assert "Nothing to resume" in tp.resume_button.toolTip()
    with Project.open(demo) as proj:  # a Stage I training the user cancelled
        rid = proj.start_run("stage1", {"preset": "quick"})
        (model_dir(proj) / f"stage1_run{rid}").mkdir(parents=True)
        proj.finish_run(rid, "cancelled", checkpoints={"dir": f"stage1_run{rid}"})
    win.open_project(demo)
    tp.job_combo.setCurrentIndex(tp.job_combo.findData("stage1"))
    assert tp.resume_button.isEnabled() and f"run {rid}" in tp.resume_button.toolTip()
    tp.job_combo.setCurrentIndex(tp.job_combo.findData("stage2"))  # nothing of Stage II
    assert not tp.resume_button.isEnabled()
    tp.job_combo.setCurrentIndex(tp.job_combo.findData("classical"))
    assert not tp.resume_button.isEnabled()


def test_quitting_says_so(win, demo, qtbot) -> None:
    assert win.open_project(demo)
    seen: list[str] = []
    win.statusBar().messageChanged.connect(seen.append)
    win.close()
    assert any(m.startswith("Closing") for m in seen)


def test_info_accepts_the_project_without_its_suffix(tmp_path, capsys, demo) -> None:
    from lmk_studio.cli import main

    d = tmp_path / "images"
    d.mkdir()
    for p in sorted((demo.parent / "images").iterdir())[:2]:
        (d / p.name).write_bytes(p.read_bytes())
    base = tmp_path / "ceph"
    assert main(["new", str(base), "--images", str(d), "--template", "chest-6"]) == 0
    assert (tmp_path / "ceph.lmk").is_file()
    capsys.readouterr()
    assert main(["info", str(base)]) == 0
    out = capsys.readouterr().out
    assert "ceph.lmk" in out and "Images: 2" in out
    assert main(["export", str(base), "--csv", str(tmp_path / "out.csv")]) == 0
    assert main(["suggest-exemplar", str(base), "--top", "1"]) == 0
    assert main(["suggest-corrections", str(base), "--top", "1"]) == 0
    assert main(["info", str(tmp_path / "nope")]) != 0
