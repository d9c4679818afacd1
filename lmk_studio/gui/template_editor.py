"""Custom template editor: add, rename, describe, colour and reorder landmarks.

Used when creating a project and, before any point exists, on the open project (the store
refuses a template change once points exist, since indices would silently change meaning).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core.errors import LmkError
from lmk_studio.core.templates import LandmarkDef, Template, load_template, save_template

PALETTE = ["#ff5555", "#55ff55", "#5599ff", "#ffcc33", "#ff55ff", "#33dddd", "#ff9944",
           "#aa88ff", "#88ff99", "#ff7799"]


class TemplateEditor(QDialog):
    def __init__(self, template: Template | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Landmark template")
        self.resize(520, 480)
        self.name = QLineEdit(template.name if template else "custom")
        self.table = QTableWidget(0, 3)
        self.table.setObjectName("templateTable")
        self.table.setHorizontalHeaderLabels(["Name", "Description", "Colour"])
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.cellDoubleClicked.connect(self._cell_double_clicked)
        self.error = QLabel()
        self.error.setStyleSheet("color: #d33")
        self.error.setWordWrap(True)
        btns = QHBoxLayout()
        for text, slot in (("Add", self.add_row), ("Remove", self.remove_row),
                           ("Up", lambda: self.move_row(-1)), ("Down", lambda: self.move_row(1)),
                           ("Load…", self._load), ("Save as…", self._save)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            btns.addWidget(b)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                               | QDialogButtonBox.StandardButton.Cancel)
        box.accepted.connect(self.accept)
        box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Template name"))
        row.addWidget(self.name, 1)
        lay.addLayout(row)
        lay.addWidget(self.table, 1)
        lay.addLayout(btns)
        lay.addWidget(self.error)
        lay.addWidget(box)
        if template is not None:
            self.set_template(template)

    def set_template(self, t: Template) -> None:
        self.name.setText(t.name)
        self.table.setRowCount(0)
        for lm in t.landmarks:
            self.add_row(lm.name, lm.description, lm.color)

    def add_row(self, name: str | None = None, description: str = "",
                color: str | None = None) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        self.table.setItem(r, 0, QTableWidgetItem(name if isinstance(name, str)
                                                  else f"landmark {r + 1}"))
        self.table.setItem(r, 1, QTableWidgetItem(description))
        c = color or PALETTE[r % len(PALETTE)]
        ci = QTableWidgetItem(c)
        ci.setForeground(QBrush(QColor(c)))
        ci.setFlags(ci.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.table.setItem(r, 2, ci)
        self.table.selectRow(r)

    def remove_row(self) -> None:
        r = self.table.currentRow()
        if r >= 0:
            self.table.removeRow(r)

    def move_row(self, delta: int) -> None:
        r = self.table.currentRow()
        t = r + delta
        if r < 0 or not (0 <= t < self.table.rowCount()):
            return
        rows = [[self.table.item(i, c).text() for c in range(3)]
                for i in range(self.table.rowCount())]
        rows[r], rows[t] = rows[t], rows[r]
        self.table.setRowCount(0)
        for n, d, c in rows:
            self.add_row(n, d, c)
        self.table.selectRow(t)

    def _cell_double_clicked(self, r: int, c: int) -> None:
        if c != 2:
            return
        col = QColorDialog.getColor(QColor(self.table.item(r, 2).text()), self)
        if col.isValid():
            it = self.table.item(r, 2)
            it.setText(col.name())
            it.setForeground(QBrush(col))

    def template(self) -> Template:
        """The edited template, validated (LmkError names the problem)."""
        lms = [LandmarkDef(self.table.item(i, 0).text().strip(),
                           self.table.item(i, 1).text().strip(),
                           self.table.item(i, 2).text().strip())
               for i in range(self.table.rowCount())]
        t = Template(self.name.text().strip() or "custom", lms)
        t.validate()
        return t

    def accept(self) -> None:
        try:
            self.template()
        except LmkError as exc:
            self.error.setText(str(exc))
            return
        super().accept()

    def _load(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Load a template", "", "Template (*.json)")
        if not f:
            return
        try:
            self.set_template(load_template(Path(f)))
            self.error.clear()
        except LmkError as exc:
            self.error.setText(str(exc))

    def _save(self) -> None:
        try:
            t = self.template()
        except LmkError as exc:
            self.error.setText(str(exc))
            return
        f, _ = QFileDialog.getSaveFileName(self, "Save the template", f"{t.name}.json",
                                           "Template (*.json)")
        if not f:
            return
        try:
            save_template(t, Path(f))
        except (LmkError, OSError) as exc:
            self.error.setText(f"{f}: {exc}")
