"""Suggest the exemplar in a new project, before the first click, without blocking the window.

The ranking (engine.exemplar.rank_exemplars: OpenCV + numpy, no torch) runs on a plain daemon
thread, not in the JobBridge's child process: it needs no torch, OpenCV and numpy release the
GIL in their heavy loops, 120 large images take a few seconds, and the job process runs one job
at a time, so using it would make the classical preview wait behind the suggestion (and pay a
process start and its imports). The thread reads image files only (paths are taken on the GUI
thread; the project's SQLite connection never crosses threads), polls a cancel flag between
images, and hands its result back through a queued Qt signal.

The banner (ExemplarHint) is non-modal: "Suggested exemplar: 047.png (most typical of the
folder) [Use it] [x]". Use it shows that image; the first landmark placed on any image makes
that image the exemplar, so the user remains free to pick another one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

log = logging.getLogger("lmk_studio.gui.exemplar")

MIN_IMAGES = 3  # with fewer images there is nothing worth suggesting


class _Signals(QObject):
    progress = Signal(int, int, int)     # generation, done, total
    ready = Signal(int, object)          # generation, engine.exemplar.Ranking
    failed = Signal(int, str)            # generation, words


class ExemplarSuggester(QObject):
    """Runs one ranking at a time on a worker thread; a new start or cancel() drops the old one
    (its result, if it still arrives, is ignored by generation)."""

    progress = Signal(int, int)          # done, total
    ready = Signal(object)               # engine.exemplar.Ranking
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._gen = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._sig = _Signals()
        self._sig.progress.connect(self._on_progress)
        self._sig.ready.connect(self._on_ready)
        self._sig.failed.connect(self._on_failed)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, paths: Sequence[Path], ids: Sequence[int]) -> None:
        """Rank `paths` (with their image ids) in the background; returns at once."""
        self.cancel()
        self._gen += 1
        gen, stop, sig = self._gen, threading.Event(), self._sig
        self._stop = stop
        paths, ids = [Path(p) for p in paths], [int(i) for i in ids]

        def work() -> None:
            from lmk_studio.engine.exemplar import RankingCancelled, rank_exemplars

            try:
                ranking = rank_exemplars(paths, ids=ids, cancel=stop.is_set,
                                         progress=lambda k, n: sig.progress.emit(gen, k, n))
            except RankingCancelled:
                return
            except Exception as exc:  # noqa: BLE001 - shown in words and logged, never silent
                log.exception("the exemplar suggestion failed")
                if not stop.is_set():
                    sig.failed.emit(gen, f"{type(exc).__name__}: {exc}")
                return
            if not stop.is_set():
                sig.ready.emit(gen, ranking)

        self._thread = threading.Thread(target=work, name="lmk-exemplar", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._gen += 1

    def wait(self, timeout_s: float = 2.0) -> bool:
        """For tests and closing: True when no ranking thread is left running."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return not self.is_running()

    def _on_progress(self, gen: int, k: int, n: int) -> None:
        if gen == self._gen:
            self.progress.emit(k, n)

    def _on_ready(self, gen: int, ranking: Any) -> None:
        if gen == self._gen:
            self.ready.emit(ranking)

    def _on_failed(self, gen: int, message: str) -> None:
        if gen == self._gen:
            self.failed.emit(message)


class ExemplarHint(QFrame):
    """The banner above the image: progress while ranking, then the suggestion and Use it."""

    use_requested = Signal(int)          # image id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("exemplarHint")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("#exemplarHint { background: #23384f; border: 1px solid #3d6a99; }"
                           "#exemplarHint QLabel { color: #e8f1fb; }")
        self.candidate: Any = None
        self.label = QLabel()
        self.label.setObjectName("exemplarHintText")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        # a long file name is clipped rather than widening the whole window
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.use = QPushButton("Use it")
        self.use.setObjectName("exemplarHintUse")
        self.close_button = QPushButton("✕")
        self.close_button.setObjectName("exemplarHintClose")
        self.close_button.setToolTip("Hide the suggestion (any image can be the exemplar)")
        self.close_button.setFixedWidth(28)
        for b in (self.use, self.close_button):
            # buttons without focus: Space and Enter stay the review shortcuts of the window
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 3, 4, 3)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.use)
        lay.addWidget(self.close_button)
        # the same height in every state: the canvas below must not jump when the text changes
        self.setFixedHeight(self.sizeHint().height())
        self.use.clicked.connect(self._use)
        self.close_button.clicked.connect(self.dismiss)
        self.hide()

    def show_computing(self, done: int = 0, total: int = 0) -> None:
        self.candidate = None
        extra = f" ({done}/{total} images)" if total else ""
        self.label.setText("Looking for the most typical image to use as the exemplar…" + extra)
        self.use.hide()
        self.show()

    def show_suggestion(self, candidate: Any, n_ranked: int) -> None:
        """candidate: engine.exemplar.Candidate with an image_id."""
        self.candidate = candidate
        self.label.setText(f"Suggested exemplar: {candidate.name} ({candidate.why}, best of "
                           f"{n_ranked}). Or annotate any image you prefer.")
        self.label.setToolTip("Ranked without labels: after aligning every image to the "
                              "folder's median, the image most similar to all the others "
                              f"(score {candidate.score:.3f}).")
        self.use.show()
        self.show()

    def show_used(self) -> None:
        if self.candidate is not None:
            self.label.setText(f"{self.candidate.name} is shown: its first landmark makes it "
                               "the exemplar.")
        self.use.hide()

    def dismiss(self) -> None:
        self.candidate = None
        self.hide()

    def _use(self) -> None:
        if self.candidate is not None and self.candidate.image_id is not None:
            self.use_requested.emit(int(self.candidate.image_id))
