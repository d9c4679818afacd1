"""Keyboard reference, built from the window's own actions so it can never go stale."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

MOUSE = [
    ("Mouse", "Place the current landmark", "Left click on the image"),
    ("Mouse", "Move a landmark (one undo step)", "Drag the point"),
    ("Mouse", "Cancel a drag", "Right click while dragging"),
    ("Mouse", "Select a landmark", "Click its point or name"),
    ("Mouse", "Pan", "Drag on the image"),
    ("Mouse", "Zoom around the cursor", "Wheel"),
    ("Mouse", "Window / level", "Drag the level bars of the histogram on the right"),
]


def shortcut_rows(actions: Iterable[tuple[str, QAction]]) -> list[tuple[str, str, str]]:
    rows = []
    for group, a in actions:
        keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText)
                         for s in a.shortcuts())
        if keys:
            name = a.property("helpText") or a.text()
            rows.append((group, str(name).replace("&", ""), keys))
    return rows


class HelpDialog(QDialog):
    def __init__(self, actions: Iterable[tuple[str, QAction]],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard reference")
        self.resize(560, 620)
        rows = shortcut_rows(actions) + MOUSE
        self.table = QTableWidget(len(rows), 3)
        self.table.setHorizontalHeaderLabels(["Area", "Action", "Keys"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnToContents(0)
        self.table.resizeColumnToContents(2)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table)
        lay.addWidget(box)
        self.rows = rows
