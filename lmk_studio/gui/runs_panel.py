"""The runs side by side, and the banner that says the predictions are older than an edit.

RunsPanel (in the training dock) lists every finished run that predicted points: method, when,
mean confidence, how far it agrees with the active run, and how far it is from the user's own
reviewed points; "Use this run's points" writes an earlier run back as the current points
(core.history.restore_run: never a human's point). StaleBanner sits above the image when the
active run was made from an exemplar (or reviewed points) that has changed since.
"""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core.history import RunSummary

COLUMNS = ["Run", "Method", "When", "Mean conf.", "vs active", "On your points"]


def when_words(stamp: str | None) -> str:
    """An ISO time stamp as local 'HH:MM' today, else 'DD Mon HH:MM'."""
    if not stamp:
        return "–"
    try:
        t = datetime.fromisoformat(stamp).astimezone()
    except ValueError:
        return stamp
    now = datetime.now().astimezone()
    return t.strftime("%H:%M") if t.date() == now.date() else t.strftime("%d %b %H:%M")


def _px(v: float | None, n: int | None = None) -> str:
    if v is None:
        return "–"
    return f"{v:.1f} px" + (f" ({n})" if n is not None else "")


class RunsPanel(QWidget):
    """A small table of runs; emits restore_requested(run id) for "Use this run's points"."""

    restore_requested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.summaries: list[RunSummary] = []
        self.title = QLabel("Runs")
        self.title.setToolTip("Every run keeps its points. 'vs active': mean distance to the "
                              "points you see now; 'On your points': mean distance to the points "
                              "you corrected or accepted (a run is not scored on points accepted "
                              "from itself), with their count.")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("runsTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMaximumHeight(150)
        self.table.itemSelectionChanged.connect(self._update_button)
        self.use_button = QPushButton("Use this run's points")
        self.use_button.setObjectName("useRunButton")
        self.use_button.setToolTip("Make the selected run's points the current ones. Your "
                                   "accepted, corrected and absent points and the exemplar stay.")
        self.use_button.clicked.connect(self._use)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.table)
        lay.addWidget(self.use_button)
        self._update_button()

    def set_summaries(self, rows: list[RunSummary]) -> None:
        """Newest first; the active run in bold."""
        keep = self.selected_run()
        self.summaries = sorted(rows, key=lambda s: s.run_id, reverse=True)
        self.table.setRowCount(len(self.summaries))
        for r, s in enumerate(self.summaries):
            conf = "–" if s.mean_confidence is None else f"{s.mean_confidence:.2f}"
            cells = [f"{s.run_id}{'  ● active' if s.active else ''}", s.method,
                     when_words(s.finished), conf, "" if s.active else _px(s.agreement_px),
                     _px(s.user_error_px, s.n_user) if s.n_user else "–"]
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                it.setData(Qt.ItemDataRole.UserRole, s.run_id)
                if s.active:
                    f = QFont(it.font())
                    f.setBold(True)
                    it.setFont(f)
                self.table.setItem(r, c, it)
            if s.run_id == keep:
                self.table.selectRow(r)
        self.title.setText(f"Runs ({len(self.summaries)})" if self.summaries
                           else "Runs: none yet")
        self._update_button()

    def selected_run(self) -> int | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        it = self.table.item(rows[0].row(), 0)
        return int(it.data(Qt.ItemDataRole.UserRole)) if it is not None else None

    def select_run(self, run_id: int) -> None:
        for r, s in enumerate(self.summaries):
            if s.run_id == run_id:
                self.table.selectRow(r)

    def _update_button(self) -> None:
        rid = self.selected_run()
        active = next((s.active for s in self.summaries if s.run_id == rid), True)
        self.use_button.setEnabled(rid is not None and not active)

    def _use(self) -> None:
        rid = self.selected_run()
        if rid is not None:
            self.restore_requested.emit(rid)


class StaleBanner(QFrame):
    """"Predictions are older than your exemplar edit (…) [Re-run] [x]" above the image."""

    rerun_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("staleBanner")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("#staleBanner { background: #4a3b12; border: 1px solid #c9a227; }"
                           "#staleBanner QLabel { color: #fbf3da; }")
        self.reason: str | None = None
        self.label = QLabel()
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.rerun = QPushButton("Re-run")
        self.rerun.setObjectName("staleRerun")
        self.close_button = QPushButton("✕")
        self.close_button.setToolTip("Hide until the next edit")
        self.close_button.setFixedWidth(28)
        for b in (self.rerun, self.close_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 3, 4, 3)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.rerun)
        lay.addWidget(self.close_button)
        self.setFixedHeight(self.sizeHint().height())
        self.rerun.clicked.connect(self.rerun_requested)
        self.close_button.clicked.connect(self.hide)
        self.hide()

    def show_stale(self, run_words: str, reason: str, can_rerun: bool, rerun_words: str,
                   busy: bool = False) -> None:
        self.reason = reason
        tail = ("a job is running; re-run when it ends" if busy else
                rerun_words if can_rerun else "complete the exemplar to re-run")
        self.label.setText(f"Predictions ({run_words}) are older than your exemplar edit "
                           f"({reason}) — {tail}")
        self.label.setToolTip(self.label.text())
        self.rerun.setEnabled(can_rerun and not busy)
        self.show()

    def clear(self) -> None:
        self.reason = None
        self.hide()
