"""Start screen: new project (image folder + bundled or custom template), recent, demo."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core.errors import LmkError
from lmk_studio.core.templates import Template, bundled_templates
from lmk_studio.gui import settings
from lmk_studio.gui.template_editor import TemplateEditor

CUSTOM = "Custom…"
PROJECT_SUFFIX = ".lmk"


def default_project_path(images_dir: Path) -> Path:
    """Beside the image folder, named after it: images stay untouched in their folder."""
    images_dir = Path(images_dir)
    return images_dir.parent / f"{images_dir.name}{PROJECT_SUFFIX}"


class NewProjectDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New project")
        self.resize(560, 200)
        self.custom: Template | None = None
        self.images = QLineEdit()
        self.images.setObjectName("imagesEdit")
        self.images.setPlaceholderText("Folder with the X-rays (PNG, JPEG, TIFF, BMP, DICOM)")
        b1 = QPushButton("Browse…")
        b1.clicked.connect(self._browse_images)
        r1 = QHBoxLayout()
        r1.addWidget(self.images, 1)
        r1.addWidget(b1)
        self.template = QComboBox()
        self.template.setObjectName("templateCombo")
        self._bundled = bundled_templates()
        for name, t in self._bundled.items():
            self.template.addItem(f"{name} ({len(t)} landmarks)", name)
        self.template.addItem(CUSTOM, CUSTOM)
        last = self.template.findData(settings.last_template() or "")
        if last >= 0:  # the template of the last new project: clinics use one or two
            self.template.setCurrentIndex(last)
        self.template.activated.connect(self._template_chosen)
        self.project = QLineEdit()
        self.project.setObjectName("projectEdit")
        b2 = QPushButton("Browse…")
        b2.clicked.connect(self._browse_project)
        r2 = QHBoxLayout()
        r2.addWidget(self.project, 1)
        r2.addWidget(b2)
        self.images.textChanged.connect(self._suggest_project)
        self.error = QLabel()
        self.error.setObjectName("newProjectError")
        self.error.setStyleSheet("color: #d33")
        self.error.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Images", r1)
        form.addRow("Template", self.template)
        form.addRow("Project file", r2)
        form.addRow(self.error)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                               | QDialogButtonBox.StandardButton.Cancel)
        box.button(QDialogButtonBox.StandardButton.Ok).setText("Create")
        box.accepted.connect(self.accept)
        box.rejected.connect(self.reject)
        form.addRow(box)
        self._auto_project = True

    def _browse_images(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder of X-rays", self.images.text())
        if d:
            self.images.setText(d)

    def _browse_project(self) -> None:
        f, _ = QFileDialog.getSaveFileName(self, "Project file", self.project.text(),
                                           f"lmk_studio project (*{PROJECT_SUFFIX})")
        if f:
            self._auto_project = False
            self.project.setText(f if f.endswith(PROJECT_SUFFIX) else f + PROJECT_SUFFIX)

    def _suggest_project(self, text: str) -> None:
        if self._auto_project and text.strip():
            self.project.setText(str(default_project_path(Path(text.strip()))))

    def _template_chosen(self, _i: int) -> None:
        if self.template.currentData() == CUSTOM:
            ed = TemplateEditor(self.custom, self)
            if ed.exec() == QDialog.DialogCode.Accepted:
                self.custom = ed.template()
                self.template.setItemText(self.template.count() - 1,
                                          f"Custom: {self.custom.name} ({len(self.custom)})")

    def chosen_template(self) -> Template:
        key = self.template.currentData()
        if key == CUSTOM:
            if self.custom is None:
                raise LmkError("choose or define a custom template first")
            return self.custom
        return self._bundled[key]

    def values(self) -> tuple[Path, Template, Path]:
        """(images folder, template, project file); LmkError says what is wrong."""
        images = self.images.text().strip()
        if not images:
            raise LmkError("choose the folder of X-rays")
        img = Path(images)
        if not img.is_dir():
            raise LmkError(f"{img}: not a folder")
        proj = self.project.text().strip()
        if not proj:
            raise LmkError("choose where to save the project file")
        p = Path(proj)
        if p.exists():
            raise LmkError(f"{p}: a file with this name exists already; choose another name "
                           "(or open it from the start screen)")
        return img, self.chosen_template(), p

    def accept(self) -> None:
        try:
            self.values()
        except LmkError as exc:
            self.error.setText(str(exc))
            return
        key = self.template.currentData()
        if key != CUSTOM:  # a custom template lives in its project only: nothing to recall
            settings.set_last_template(str(key))
        super().accept()


class StartScreen(QWidget):
    new_requested = Signal()
    open_requested = Signal(str)  # "" = ask for a file
    demo_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        title = QLabel("<h1>lmk_studio</h1><p>Mark the landmarks on one X-ray; the app "
                       "proposes them on all the others, with a confidence for each point, "
                       "for you to review.</p>")
        title.setWordWrap(True)
        new = QPushButton("New project…")
        new.setObjectName("newProjectButton")
        opn = QPushButton("Open project…")
        demo = QPushButton("Open the demo project")
        demo.setObjectName("demoButton")
        new.clicked.connect(self.new_requested)
        opn.clicked.connect(lambda: self.open_requested.emit(""))
        demo.clicked.connect(self.demo_requested)
        self.recent = QListWidget()
        self.recent.setObjectName("recentList")
        self.recent.itemActivated.connect(self._recent_activated)
        self.recent.itemDoubleClicked.connect(self._recent_activated)
        col = QVBoxLayout()
        col.addWidget(title)
        for b in (new, opn, demo):
            b.setMinimumHeight(34)
            col.addWidget(b)
        col.addWidget(QLabel("Recent projects"))
        col.addWidget(self.recent, 1)
        outer = QHBoxLayout(self)
        outer.addStretch(1)
        w = QWidget()
        w.setLayout(col)
        w.setMaximumWidth(560)
        outer.addWidget(w, 3)
        outer.addStretch(1)
        self.refresh()

    def refresh(self) -> None:
        self.recent.clear()
        for p in settings.recent_projects():
            item = QListWidgetItem(p.name + ("" if p.exists() else "  (missing)"))
            item.setToolTip(str(p))
            item.setData(Qt.ItemDataRole.UserRole, str(p))
            if not p.exists():
                item.setForeground(Qt.GlobalColor.gray)
            self.recent.addItem(item)

    def _recent_activated(self, item: QListWidgetItem) -> None:
        self.open_requested.emit(item.data(Qt.ItemDataRole.UserRole))
