"""Export dialog: CSV (long or wide), JSON or COCO keypoints; px or mm; all or reviewed only.

The writing itself is core.formats (the same code as `lmk-studio export`), so the GUI and the
CLI give identical files.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QWidget,
)

FORMATS = {  # label -> (function name in core.formats, suffix, extra kwargs)
    "CSV, one row per landmark": ("export_csv", ".csv", {"wide": False}),
    "CSV, one row per image": ("export_csv", ".csv", {"wide": True}),
    "JSON": ("export_json", ".json", {}),
    "COCO keypoints (JSON)": ("export_coco", ".json", {}),
}


def run_export(project: Any, fmt: str, path: Path, reviewed_only: bool, units: str) -> Path:
    """Call the core.formats writer; pass `units` when the writer knows it."""
    from lmk_studio.core import formats

    name, _suffix, extra = FORMATS[fmt]
    fn = getattr(formats, name)
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {k: v for k, v in extra.items() if k in params}
    if "reviewed_only" in params:
        kwargs["reviewed_only"] = reviewed_only
    if "units" in params:
        kwargs["units"] = units
    elif "unit" in params:
        kwargs["unit"] = units
    fn(project, path, **kwargs)
    return path


def units_supported() -> bool:
    """Whether the writers take a px/mm choice (else they write px and mm columns together)."""
    try:
        from lmk_studio.core import formats
    except ImportError:
        return False
    params = inspect.signature(formats.export_csv).parameters
    return "units" in params or "unit" in params


class ExportDialog(QDialog):
    def __init__(self, project: Any, parent: QWidget | None = None,
                 spacing_known: bool = False) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export landmarks")
        self.project = project
        self.fmt = QComboBox()
        self.fmt.addItems(list(FORMATS))
        self.px = QRadioButton("pixels")
        self.mm = QRadioButton("millimetres")
        self.px.setChecked(True)
        self._units = QButtonGroup(self)
        self._units.addButton(self.px)
        self._units.addButton(self.mm)
        self.mm.setEnabled(spacing_known)
        if not spacing_known:
            self.mm.setToolTip("No image has a pixel spacing: calibrate first (Tools menu)")
        units_row = QHBoxLayout()
        units_row.addWidget(self.px)
        units_row.addWidget(self.mm)
        units_row.addStretch(1)
        self.all = QRadioButton("all placed landmarks")
        self.reviewed = QRadioButton("reviewed only (exemplar, accepted, corrected)")
        self.all.setChecked(True)
        self._scope = QButtonGroup(self)
        self._scope.addButton(self.all)
        self._scope.addButton(self.reviewed)
        self.path = QLineEdit()
        stem = Path(project.path).with_suffix("")
        self.path.setText(str(stem.parent / f"{stem.name}_landmarks.csv"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path, 1)
        path_row.addWidget(browse)
        self.note = QLabel()
        self.note.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Format", self.fmt)
        form.addRow("Units", units_row)
        form.addRow("Points", self.all)
        form.addRow("", self.reviewed)
        form.addRow("File", path_row)
        form.addRow(self.note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.fmt.currentTextChanged.connect(self._fix_suffix)
        if not units_supported():
            self.note.setText("Files carry pixel coordinates, and millimetres where the "
                              "spacing is known, with its source.")
            self.px.setEnabled(False)
            self.mm.setEnabled(False)

    def _fix_suffix(self, fmt: str) -> None:
        suffix = FORMATS[fmt][1]
        p = Path(self.path.text())
        if p.suffix.lower() != suffix:
            self.path.setText(str(p.with_suffix(suffix)))

    def _browse(self) -> None:
        suffix = FORMATS[self.fmt.currentText()][1]
        f, _ = QFileDialog.getSaveFileName(self, "Export to", self.path.text(),
                                           f"*{suffix}")
        if f:
            self.path.setText(f)

    def choice(self) -> tuple[str, Path, bool, str]:
        return (self.fmt.currentText(), Path(self.path.text()), self.reviewed.isChecked(),
                "mm" if self.mm.isChecked() else "px")
