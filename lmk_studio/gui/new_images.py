"""New patients in the app: notice image files that appear in the project's folders, and offer
to add and predict them with the newest trained model, without a dialog in the way.

QFileSystemWatcher reports that a folder changed, not what changed, and a copy of 20 images
fires it dozens of times; the watcher waits until the folder has been quiet for a moment, then
lists it (file names only, nothing decoded) and reports the supported files the project does not
hold yet. Files the user dismissed are not offered again in this session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from lmk_studio.core.errors import LmkError

log = logging.getLogger("lmk_studio.gui.new_images")

QUIET_MS = 1500  # a folder must be quiet this long before it is listed (copies in progress)


def job_for_new_images(kinds_finished: Iterable[str]) -> str | None:
    """The prediction a new image gets: the newest trained method's, else the preview."""
    kinds = set(kinds_finished)
    if "stage2" in kinds:
        return "predict-stage2"
    if "stage1" in kinds:
        return "predict-stage1"
    if "classical" in kinds:
        return "classical"
    return None


class FolderWatcher(QObject):
    """Watches folders; emits `new_files` with supported image files not in `known`."""

    new_files = Signal(list)

    def __init__(self, parent: QObject | None = None, quiet_ms: int = QUIET_MS) -> None:
        super().__init__(parent)
        self._watch = QFileSystemWatcher(self)
        self._watch.directoryChanged.connect(self._changed)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(quiet_ms)
        self._timer.timeout.connect(self.scan)
        self._known: set[Path] = set()
        self._ignored: set[Path] = set()

    def watch(self, folders: Iterable[Path], known: Iterable[Path]) -> None:
        """Watch these folders; `known`: the files the project already holds."""
        self.clear()
        self._known = {self._key(p) for p in known}
        dirs = sorted({str(Path(f)) for f in folders if Path(f).is_dir()})
        if dirs:
            self._watch.addPaths(dirs)

    def set_known(self, known: Iterable[Path]) -> None:
        self._known = {self._key(p) for p in known}

    def ignore(self, paths: Iterable[Path]) -> None:
        self._ignored |= {self._key(p) for p in paths}

    def clear(self) -> None:
        self._timer.stop()
        if self._watch.directories():
            self._watch.removePaths(self._watch.directories())
        self._known, self._ignored = set(), set()

    def folders(self) -> list[str]:
        return list(self._watch.directories())

    def _changed(self, _path: str) -> None:
        self._timer.start()   # restarts: listed once the folder is quiet

    def scan(self) -> list[Path]:
        """List the watched folders now; emit and return the new supported files."""
        from lmk_studio.core.images import list_images

        new: list[Path] = []
        for d in self.folders():
            try:
                files = list_images(d)
            except LmkError as exc:   # folder removed or unreadable: say so in the log only
                log.info("cannot list %s: %s", d, exc)
                continue
            new += [p for p in files if self._key(p) not in self._known | self._ignored]
        if new:
            self.new_files.emit(new)
        return new

    @staticmethod
    def _key(p: Path | str) -> Path:
        """The file on disk: a multi-frame DICOM's frames (x.dcm#3) all count as x.dcm."""
        from lmk_studio.core.images import split_frame

        try:
            return split_frame(p)[0].resolve()
        except OSError:
            return Path(p)


class NewImagesBanner(QFrame):
    """"3 new images in xrays/: [Add and predict] [x]" above the image."""

    add_requested = Signal(list)      # paths
    dismissed = Signal(list)          # paths

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("newImagesBanner")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("#newImagesBanner { background: #2f3d24; border: 1px solid #6b8f3d; }"
                           "#newImagesBanner QLabel { color: #eef6e4; }")
        self.paths: list[Path] = []
        self.label = QLabel()
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.add = QPushButton("Add and predict")
        self.add.setObjectName("newImagesAdd")
        self.close_button = QPushButton("✕")
        self.close_button.setToolTip("Not now (they are not offered again until you reopen "
                                     "the project; File ▸ Predict new images… adds them)")
        self.close_button.setFixedWidth(28)
        for b in (self.add, self.close_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 3, 4, 3)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.add)
        lay.addWidget(self.close_button)
        self.setFixedHeight(self.sizeHint().height())
        self.add.clicked.connect(self._add)
        self.close_button.clicked.connect(self._dismiss)
        self.hide()

    def offer(self, paths: list[Path], method_words: str) -> None:
        self.paths = sorted({Path(p) for p in self.paths} | {Path(p) for p in paths})
        folders = sorted({p.parent.name or str(p.parent) for p in self.paths})
        where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
        self.label.setText(f"{len(self.paths)} new image(s) in {where}: add them to the project "
                           f"and predict them ({method_words})?")
        self.label.setToolTip("\n".join(str(p) for p in self.paths[:30]))
        self.show()

    def _add(self) -> None:
        paths, self.paths = self.paths, []
        self.hide()
        if paths:
            self.add_requested.emit(paths)

    def _dismiss(self) -> None:
        paths, self.paths = self.paths, []
        self.hide()
        self.dismissed.emit(paths)
