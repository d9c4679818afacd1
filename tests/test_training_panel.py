"""The training dock driven offscreen: progress, loss curves and log arrive through signals; a
cancel stops the child; a crashing child is reported in words and the panel keeps working.

Test-only jobs come from tests/test_process.py (a Qt-free module the spawned child imports).
"""

from __future__ import annotations

import json
import time

import psutil
import pytest

pytest.importorskip("pytestqt")

from lmk_studio.gui.training_panel import TrainingPanel, format_eta, stage_words  # noqa: E402

pytestmark = pytest.mark.gui


def _hook(tmp_path, name: str) -> dict:
    return {"job": name, "target": f"test_process:{name}", "project": None, "torch_threads": 1,
            "nice": 0, "log_path": str(tmp_path / f"{name}.log")}


@pytest.fixture
def panel(qtbot):
    w = TrainingPanel()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown(5.0)


def test_progress_losses_and_log_reach_the_panel(panel, qtbot, tmp_path) -> None:
    seen = []
    panel.progress.connect(seen.append)
    with qtbot.waitSignal(panel.finished, timeout=30_000) as blocker:
        assert panel.start_spec(_hook(tmp_path, "hook_finish"))
        assert panel.is_running() and not panel.start_button.isEnabled()
        assert panel.cancel_button.isEnabled()
    assert blocker.args == [[11, 12]]
    assert seen and seen[-1].stage == "stage-x" and seen[-1].step == 5
    assert set(panel.plot.curves) == {"heat", "cross"}
    xs, ys = panel.plot.data["heat"]
    assert xs[-1] == 5 and ys[-1] == pytest.approx(0.2)
    qtbot.waitUntil(lambda: panel.plot.curves["heat"].getData()[0] is not None, timeout=2000)
    assert "hello from the child" in panel.log_view.toPlainText()
    assert panel.bar.value() == 1000
    assert str(tmp_path / "hook_finish.log") in panel.log_file_label.text()
    assert not panel.is_running()


def test_cancel_button_stops_the_child(panel, qtbot, tmp_path) -> None:
    panel.set_project(tmp_path / "p.lmk")
    with qtbot.waitSignal(panel.started, timeout=30_000):
        panel.start_spec(_hook(tmp_path, "hook_cooperative"))
    pid = panel.bridge.process.pid
    t0 = time.monotonic()
    with qtbot.waitSignal(panel.cancelled, timeout=10_000):
        panel.cancel_button.click()
        assert not panel.cancel_button.isEnabled()
    assert time.monotonic() - t0 < 3.0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "Cancelled" in panel.step_label.text()
    assert panel.start_button.isEnabled()


def test_crash_is_reported_and_the_panel_survives(panel, qtbot, tmp_path) -> None:
    with qtbot.waitSignal(panel.failed, timeout=30_000) as blocker:
        panel.start_spec(_hook(tmp_path, "hook_exit3"))
    msg = blocker.args[0]
    assert "exit code 3" in msg and "about to die" in msg
    assert str(tmp_path / "hook_exit3.log") in msg
    assert "Failed" in panel.step_label.text() and not panel.is_running()
    with qtbot.waitSignal(panel.finished, timeout=30_000):  # the next job runs normally
        assert panel.start_spec(_hook(tmp_path, "hook_finish"))


def test_refusals_are_said_in_words(panel, qtbot, tmp_path) -> None:
    with qtbot.waitSignal(panel.failed) as blocker:
        assert not panel.start("stage1")
    assert "Open a project first" in blocker.args[0]
    panel.set_project(tmp_path / "p.lmk")
    assert panel.start_button.isEnabled()
    with qtbot.waitSignal(panel.failed) as blocker:
        assert not panel.start("stage1", preset="turbo")
    assert "'turbo' not found" in blocker.args[0]
    bad = tmp_path / "bad preset ü.json"
    bad.write_text("{not json", encoding="utf-8")
    with qtbot.waitSignal(panel.failed) as blocker:
        assert not panel.start("stage2", preset=str(bad))
    assert str(bad) in blocker.args[0]
    with qtbot.waitSignal(panel.failed) as blocker:
        assert not panel.start("all", preset=str(bad))
    assert "describes one stage" in blocker.args[0]
    with qtbot.waitSignal(panel.started, timeout=30_000):
        panel.start_spec(_hook(tmp_path, "hook_cooperative"))
    with qtbot.waitSignal(panel.failed) as blocker:
        assert not panel.start("stage1")
    assert "already running" in blocker.args[0]
    with qtbot.waitSignal(panel.cancelled, timeout=10_000):
        panel.cancel()


def test_pickers_show_presets_files_and_the_device(panel, tmp_path) -> None:
    import torch

    names = [panel.preset_combo.itemData(i) for i in range(panel.preset_combo.count())]
    assert names[:3] == ["quick", "cpu", "paper"]
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"steps": 4}), encoding="utf-8")
    panel.set_preset_file(f)
    assert panel.selected_preset() == str(f)
    assert panel.preset_combo.currentText() == "mine.json"
    assert panel.selected_device() == "auto"
    if not torch.cuda.is_available():
        assert panel.device_label.text().startswith("CPU — no GPU found")
    assert {panel.job_combo.itemData(i) for i in range(panel.job_combo.count())} >= {
        "all", "classical", "stage1", "stage2"}


def test_words_for_stages_and_eta() -> None:
    assert stage_words("stage2-load") == "Stage II: loading images"
    assert stage_words("stage1-coarse") == "Stage I: training (coarse)"
    assert stage_words("stage1-refine-adapt") == "Stage I: adapting to each image"
    assert stage_words("stage1-consensus") == "Stage I: consensus over similar images"
    assert format_eta(75) == "ETA 1:15" and format_eta(3725) == "ETA 1:02:05"
    assert format_eta(None) == "ETA –"


def test_classical_preview_through_the_panel_writes_points(panel, qtbot, tmp_path) -> None:
    store = pytest.importorskip("lmk_studio.core.store")
    pytest.importorskip("lmk_studio.core.images")
    pytest.importorskip("lmk_studio.engine.classical")
    phantoms = pytest.importorskip("lmk_studio.core.phantoms")
    from lmk_studio.core.points import Source, Status

    lmk = phantoms.write_demo_project(tmp_path / "demo ñ", n=4, size=(128, 96), seed=1)
    panel.set_project(lmk)
    with qtbot.waitSignal(panel.finished, timeout=60_000) as blocker:
        assert panel.start("classical")
    (run_id,) = blocker.args[0]
    with store.Project.open(lmk) as p:
        assert p.run(run_id).status == "finished"
        others = [r.id for r in p.images() if r.id != p.exemplar_id]
        pts = p.points(others[0])
        assert all(q.status is Status.PREDICTED and q.source is Source.CLASSICAL for q in pts)


def test_gui_survives_many_void_qt_calls(qtbot) -> None:
    """PySide6 6.12 on Python 3.11 drops a reference to None per void call; unguarded, this
    loop aborts the whole test process with "none_dealloc" (measured: ~17k calls)."""
    import sys

    from PySide6.QtWidgets import QLabel

    from lmk_studio.gui.job_bridge import guard_pyside_refcounts

    guard_pyside_refcounts()
    label = QLabel()
    qtbot.addWidget(label)
    for k in range(40_000):
        label.setText("x" if k % 2 else "y")
    assert sys.getrefcount(None) > 1000
