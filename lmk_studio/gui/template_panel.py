"""The landmark list of the current image: every template landmark with its state.

Selecting a row makes it the current landmark (the next click places it) and centres the view
on it when it is placed.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core.points import LandmarkPoint, Status
from lmk_studio.gui.canvas import point_style
from lmk_studio.gui.state import Document


def state_words(p: LandmarkPoint) -> str:
    if p.status is Status.UNLABELLED:
        return "not placed"
    if p.status is Status.ABSENT:
        return "absent"
    if p.status is Status.PREDICTED:
        c = p.confidence
        return f"predicted {c:.2f}" if c is not None and math.isfinite(c) else "predicted"
    return {Status.EXEMPLAR: "placed", Status.ACCEPTED: "accepted",
            Status.CORRECTED: "corrected"}[p.status]


class TemplatePanel(QWidget):
    landmark_selected = Signal(int)
    absent_requested = Signal()
    clear_requested = Signal()

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.table = QTableWidget(0, 3)
        self.table.setObjectName("landmarkTable")
        self.table.setHorizontalHeaderLabels(["", "Landmark", "State"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.summary = QLabel()
        self.absent_btn = QPushButton("Absent (X)")
        self.absent_btn.setToolTip("The current landmark is not visible on this image")
        self.clear_btn = QPushButton("Clear (Del)")
        self.absent_btn.clicked.connect(self.absent_requested)
        self.clear_btn.clicked.connect(self.clear_requested)
        for b in (self.absent_btn, self.clear_btn):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        row = QHBoxLayout()
        row.addWidget(self.absent_btn)
        row.addWidget(self.clear_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.summary)
        lay.addWidget(self.table, 1)
        lay.addLayout(row)
        self._updating = False
        self.table.itemSelectionChanged.connect(self._selection)
        doc.project_changed.connect(self.rebuild)
        doc.image_changed.connect(lambda _i: self.refresh())
        doc.points_changed.connect(self._points_changed)
        doc.landmark_changed.connect(self._select_row)

    def rebuild(self) -> None:
        self._updating = True
        names = self.doc.names()
        self.table.setRowCount(len(names))
        if self.doc.project is not None:
            for i, lm in enumerate(self.doc.project.template.landmarks):
                sw = QTableWidgetItem("●")
                sw.setForeground(QBrush(QColor(lm.color)))
                name = QTableWidgetItem(lm.name)
                if lm.description:
                    name.setToolTip(lm.description)
                self.table.setItem(i, 0, sw)
                self.table.setItem(i, 1, name)
                self.table.setItem(i, 2, QTableWidgetItem(""))
        self._updating = False
        self.refresh()

    def _points_changed(self, image_id: int) -> None:
        if image_id in (-1, self.doc.image_id):
            self.refresh()

    def refresh(self) -> None:
        pts = self.doc.points()
        self._updating = True
        placed = 0
        for p in pts:
            item = self.table.item(p.index, 2)
            if item is None:
                continue
            item.setText(state_words(p))
            if p.placed:
                placed += 1
                item.setForeground(QBrush(QColor(point_style(p)[0]).darker(130)))
            else:
                item.setForeground(QBrush(QColor("#888888")))
        absent = sum(p.status is Status.ABSENT for p in pts)
        n = len(pts)
        self.summary.setText(f"{placed} of {n} placed, {absent} absent" if n else "No image")
        self._updating = False
        self._select_row(self.doc.landmark)

    def _select_row(self, index: int) -> None:
        if not (0 <= index < self.table.rowCount()):
            return
        self._updating = True
        self.table.selectRow(index)
        self.table.scrollToItem(self.table.item(index, 1))
        self._updating = False

    def _selection(self) -> None:
        if self._updating:
            return
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.landmark_selected.emit(rows[0].row())
