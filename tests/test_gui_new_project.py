"""Issue 12 items 6 and 8 (grammar): the New project dialog starts on the last template chosen;
a folder with no readable image makes no project file and no Recent entry, with one dialog that
names each file and why; "1 image was added" in words a person would write."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QMessageBox  # noqa: E402
from test_gui_helpers import main_window, write_phantom_folder  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def win(qtbot):
    with main_window(qtbot, auto_preview=False, auto_suggest=False, size=None) as w:
        yield w


def _boxes(win) -> list[str]:
    return [b.text() for b in win.findChildren(QMessageBox) if b.isVisible()]


def test_the_template_picker_remembers_the_last_choice(win, qtbot, tmp_path) -> None:
    from lmk_studio.gui.start_screen import NewProjectDialog

    folder = tmp_path / "xrays"
    write_phantom_folder(folder, n=2)
    dlg = NewProjectDialog(win)
    qtbot.addWidget(dlg)
    first = dlg.template.currentData()
    other = next(dlg.template.itemData(i) for i in range(dlg.template.count())
                 if dlg.template.itemData(i) not in (first, "Custom…"))
    dlg.images.setText(str(folder))
    dlg.template.setCurrentIndex(dlg.template.findData(other))
    dlg.accept()  # the user presses Create
    assert dlg.result() == NewProjectDialog.DialogCode.Accepted
    again = NewProjectDialog(win)  # the next new project, even in a later session
    qtbot.addWidget(again)
    assert again.template.currentData() == other


def test_a_folder_without_readable_images_makes_no_project(win, tmp_path) -> None:
    from lmk_studio.core.phantoms import phantom_template
    from lmk_studio.gui import settings

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated" * 10)
    (folder / "b.jpg").write_bytes(b"not a jpeg at all")
    target = tmp_path / "scans.lmk"
    assert not win.create_project(target, phantom_template(), folder)
    assert not target.exists() and not list(tmp_path.glob("scans.lmk*"))
    assert target.resolve() not in settings.recent_projects()
    assert win.doc.project is None and win.stack.currentWidget() is win.start
    texts = _boxes(win)
    assert len(texts) == 1  # one dialog, naming each file and why
    assert "no project was made" in texts[0] and "a.png" in texts[0] and "b.jpg" in texts[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello", encoding="utf-8")
    assert not win.create_project(tmp_path / "empty.lmk", phantom_template(), empty)
    assert not (tmp_path / "empty.lmk").exists()
    assert any("no image files" in t for t in _boxes(win))


def test_one_image_added_is_said_in_the_singular(win, tmp_path) -> None:
    from lmk_studio.core.phantoms import phantom_template

    folder = tmp_path / "mixed"
    write_phantom_folder(folder, n=1, broken=True)
    assert win.create_project(tmp_path / "mixed.lmk", phantom_template(), folder)
    texts = _boxes(win)
    assert any("1 image was added; 1 file could not be read and was skipped" in t
               for t in texts), texts
