"""Issue 12 item 3: the preset follows the project and machine and says, before Start, what it is
for and roughly how long it takes here. Driven through the window offscreen."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from test_gui_helpers import main_window, write_phantom_folder  # noqa: E402

from lmk_studio.gui.presets import default_preset, estimate, has_timm  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    with main_window(qtbot, auto_preview=False, auto_suggest=False, size=None) as w:
        yield w


def test_default_follows_project_size_and_device() -> None:
    assert default_preset(24, 320, "cpu") == "quick"
    assert default_preset(24, 320, "cuda", timm=True) == "quick"
    assert default_preset(120, 2400, "cpu") == "cpu"
    assert default_preset(120, 2400, "cuda", timm=True) == "paper"
    assert default_preset(120, 2400, "cuda", timm=False) == "cpu"  # paper needs timm
    s, words, measured = estimate("stage1", "cpu", 120, "cpu")
    assert 5 * 60 <= s <= 8 * 60 and measured and words.startswith("Stage I ~")
    assert estimate("all", "cpu", 120, "cpu")[1].count("+") == 2
    assert estimate("stage1", "/x/mine.json", 10, "cpu") is None


def test_the_demo_gets_quick_and_real_images_get_cpu_with_words_and_time(win, tmp_path) -> None:
    from lmk_studio.core.phantoms import phantom_template, write_demo_project

    tp = win.training
    assert win.open_project(write_demo_project(tmp_path / "demo", n=4, size=(160, 128), seed=0))
    assert tp.selected_preset() == "quick"
    tp.job_combo.setCurrentIndex(tp.job_combo.findData("all"))
    info = tp.preset_info.text()
    assert "demo" in info and "For 4 images here:" in info and "estimate" in info
    assert "Stage I ~" in info and "Stage II ~" in info

    big = tmp_path / "clinic"
    write_phantom_folder(big, n=3, size=(900, 700))
    assert win.create_project(tmp_path / "clinic.lmk", phantom_template(), big)
    gpu = tp.device_type() != "cpu" and has_timm()
    assert tp.selected_preset() == ("paper" if gpu else "cpu")
    if not gpu:
        info = tp.preset_info.text()
        assert "real X-rays" in info and "For 3 images here:" in info
        # the user looks at paper: the words say what it is for, and that cpu suits here
        tp.preset_combo.setCurrentIndex(tp.preset_combo.findData("paper"))
        tp.preset_combo.activated.emit(tp.preset_combo.currentIndex())
        info = tp.preset_info.text()
        assert "GPU" in info and "Suggested for this project: cpu" in info
    # prediction jobs have no preset
    tp.job_combo.setCurrentIndex(tp.job_combo.findData("predict-stage2"))
    assert "no preset" in tp.preset_info.text()
