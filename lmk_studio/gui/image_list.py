"""The image list: lazily loaded thumbnails, a status per image and a filter.

Thumbnails are decoded in the thread pool only when a row is painted (the view asks the model for
the decoration of visible rows only), so opening a folder of thousands of images is instant.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QPersistentModelIndex,
    QSize,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QImage, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLineEdit,
    QListView,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core.points import Status
from lmk_studio.gui.loader import ThumbnailLoader
from lmk_studio.gui.state import Document

STATUS_COLORS = {
    "exemplar": "#33aaff", "predicted": "#ffb000", "reviewed": "#2ecc40",
    "corrected": "#d05cff", "in progress": "#cccccc", "unlabelled": "#888888",
    "missing": "#ff3b30", "unreadable": "#ff3b30",
}
FILTERS = {
    "All images": None,
    "To annotate": ("unlabelled", "in progress"),
    "Predicted (to review)": ("predicted",),
    "Reviewed": ("reviewed", "corrected", "exemplar"),
    "Corrected": ("corrected",),
    "Problems (missing, unreadable)": ("missing", "unreadable"),
}
ID_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_ROLE = Qt.ItemDataRole.UserRole + 2


class ImageModel(QAbstractListModel):
    def __init__(self, doc: Document, thumb_size: int = 64) -> None:
        super().__init__()
        self.doc = doc
        self.ids: list[int] = []
        self.thumbs: dict[int, QPixmap] = {}
        self.problems: dict[int, str] = {}
        self.loader = ThumbnailLoader(thumb_size)
        self.loader.ready.connect(self._thumb_ready)
        self.loader.failed.connect(self.mark_unreadable)
        self._placeholder = QPixmap(thumb_size, thumb_size)
        self._placeholder.fill(QColor("#303030"))

    def reset(self, new_project: bool = True) -> None:
        """New project: forget everything; same project (files re-checked): keep the known
        problems and thumbnails of images still there."""
        self.beginResetModel()
        self.ids = [r.id for r in self.doc.records()]
        if new_project:
            self.thumbs.clear()
            self.problems.clear()
            self.loader.clear()
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.ids)

    def status(self, image_id: int) -> str:
        st = self.doc.image_status(image_id)
        if st != "missing" and image_id in self.problems:
            return "unreadable"
        return st

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = 0) -> Any:
        if not index.isValid():
            return None
        iid = self.ids[index.row()]
        rec = self.doc.record(iid)
        if role == Qt.ItemDataRole.DisplayRole:
            st = self.status(iid)
            if st == "predicted":  # how urgent: the least confident point still to review
                confs = [p.confidence for p in self.doc.points(iid)
                         if p.status is Status.PREDICTED and p.confidence is not None]
                if confs:
                    st += f" {min(confs):.2f}"  # the lowest (tooltip says so)
            return f"{rec.name}\n{st}"
        if role == Qt.ItemDataRole.DecorationRole:
            pm = self.thumbs.get(iid)
            if pm is None:
                if not rec.missing and iid not in self.problems:
                    self.loader.request(iid, rec.path)
                return self._placeholder
            return pm
        if role == Qt.ItemDataRole.ForegroundRole:
            return QBrush(QColor(STATUS_COLORS.get(self.status(iid), "#cccccc")))
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = f"{rec.path}\n{rec.width} x {rec.height} px"
            if rec.spacing:
                tip += f", {rec.spacing[1]:.4g} mm/px ({rec.spacing_source})"
            if rec.missing:
                tip += "\nThe file is missing: its landmarks are kept in the project."
            if getattr(rec, "changed", False):
                tip += "\nThe file changed since it was added."
            if iid in self.problems:
                tip += f"\n{self.problems[iid]}"
            confs = [p.confidence for p in self.doc.points(iid)
                     if p.status is Status.PREDICTED and p.confidence is not None]
            if confs:
                tip += (f"\n{len(confs)} predicted points to review; lowest confidence "
                        f"{min(confs):.2f}")
            return tip
        if role == ID_ROLE:
            return iid
        if role == STATUS_ROLE:
            return self.status(iid)
        return None

    def row_of(self, image_id: int) -> int:
        try:
            return self.ids.index(image_id)
        except ValueError:
            return -1

    def refresh_ids(self, ids: list[int] | None = None) -> None:
        rows = range(len(self.ids)) if ids is None else [self.row_of(i) for i in ids]
        for r in rows:
            if r >= 0:
                ix = self.index(r)
                self.dataChanged.emit(ix, ix)

    def mark_unreadable(self, image_id: int, message: str) -> None:
        self.problems[image_id] = message
        self.refresh_ids([image_id])

    def _thumb_ready(self, image_id: int, img: QImage) -> None:
        self.thumbs[image_id] = QPixmap.fromImage(img)
        self.refresh_ids([image_id])


class _Filter(QSortFilterProxyModel):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: tuple[str, ...] | None = None
        self.text = ""

    def set(self, statuses: tuple[str, ...] | None, text: str) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9; invalidateFilter is deprecated
            self.beginFilterChange()
            self.statuses, self.text = statuses, text.lower()
            self.endFilterChange()
        else:
            self.statuses, self.text = statuses, text.lower()
            self.invalidateFilter()

    def refilter(self) -> None:
        self.set(self.statuses, self.text)

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:
        m = self.sourceModel()
        ix = m.index(row, 0, parent)
        if self.statuses is not None and m.data(ix, STATUS_ROLE) not in self.statuses:
            return False
        if self.text:
            name = str(m.data(ix, Qt.ItemDataRole.DisplayRole)).split("\n")[0].lower()
            return self.text in name
        return True


class ImageList(QWidget):
    image_selected = Signal(int)

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.model = ImageModel(doc)
        self.proxy = _Filter()
        self.proxy.setSourceModel(self.model)
        self.view = QListView()
        self.view.setObjectName("imageListView")
        self.view.setModel(self.proxy)
        self.view.setIconSize(QSize(64, 64))
        self.view.setUniformItemSizes(True)
        self.view.setSpacing(2)
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.filter = QComboBox()
        self.filter.addItems(list(FILTERS))
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter by name")
        self.search.setClearButtonEnabled(True)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(top)
        lay.addWidget(self.search)
        lay.addWidget(self.view, 1)
        self.filter.currentTextChanged.connect(self._apply_filter)
        self.search.textChanged.connect(self._apply_filter)
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self._syncing = False
        doc.project_changed.connect(lambda: self.model.reset(True))
        doc.images_changed.connect(lambda: self.model.reset(False))
        doc.points_changed.connect(self._points_changed)
        doc.image_changed.connect(self.select_image)

    def _apply_filter(self) -> None:
        self.proxy.set(FILTERS[self.filter.currentText()], self.search.text())

    def _points_changed(self, image_id: int) -> None:
        self.model.refresh_ids(None if image_id == -1 else [image_id])
        if self.proxy.statuses is not None:
            self.proxy.refilter()

    def _current_changed(self, cur: QModelIndex, _prev: QModelIndex) -> None:
        if self._syncing or not cur.isValid():
            return
        self.image_selected.emit(int(self.proxy.data(cur, ID_ROLE)))

    def select_image(self, image_id: int) -> None:
        row = self.model.row_of(image_id)
        if row < 0:
            return
        pix = self.proxy.mapFromSource(self.model.index(row))
        if pix.isValid():
            self._syncing = True
            self.view.setCurrentIndex(pix)
            self.view.scrollTo(pix)
            self._syncing = False

    def visible_ids(self) -> list[int]:
        """Image ids in the list's current (filtered) order: next/previous image follow it."""
        return [int(self.proxy.data(self.proxy.index(r, 0), ID_ROLE))
                for r in range(self.proxy.rowCount())]
