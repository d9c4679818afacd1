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
from lmk_studio.engine import trust
from lmk_studio.gui.loader import ThumbnailLoader
from lmk_studio.gui.state import Document
from lmk_studio.gui.trust_legend import TRIAGE_COLORS, TrustLegend, legend_html

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
RISK_ROLE = Qt.ItemDataRole.UserRole + 3     # image expected error px (NaN: nothing to review)
ORDERS = ("Folder order", "Worst first (review queue)")


def point_expected_px(p: Any) -> float | None:
    """A predicted point's expected error px: as written, else read back from its confidence
    (the preview writes a confidence only; engine.trust's map is invertible)."""
    if p.expected_error_px is not None:
        return float(p.expected_error_px)
    if p.confidence is not None:
        return float(trust.expected_from_confidence(p.confidence))
    return None


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
        self._triage: dict[int, tuple[float, str]] | None = None   # id -> (E px, level)

    def risk(self, image_id: int) -> float:
        """Image expected error px (engine.trust.image_expected_error) of its points still to
        review; NaN when it has none."""
        e = [point_expected_px(p) for p in self.doc.points(image_id)
             if p.status is Status.PREDICTED]
        return trust.image_expected_error([x for x in e if x is not None])

    def triage(self) -> dict[int, tuple[float, str]]:
        """(E px, 'worst' / 'doubtful' / 'fine') per image with points to review, ranked within
        the folder; cached until points change."""
        if self._triage is None:
            vals = {iid: self.risk(iid) for iid in self.ids}
            have = [i for i, v in vals.items() if v == v]
            lv = trust.triage_levels([vals[i] for i in have])
            self._triage = {i: (vals[i], lv[k]) for k, i in enumerate(have)}
        return self._triage

    def _risk_text(self, image_id: int) -> str | None:
        t = self.triage().get(image_id)
        if t is None:
            return None
        rec = self.doc.record(image_id)
        txt = f"E {t[0]:.0f} px"
        if rec.spacing:
            txt += f" ({t[0] * float(sum(rec.spacing)) / 2:.1f} mm)"
        return txt

    def reset(self, new_project: bool = True) -> None:
        """New project: forget everything; same project (files re-checked): keep the known
        problems and thumbnails of images still there."""
        self.beginResetModel()
        self._triage = None
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
            if st == "predicted":  # how urgent: the expected error of its worst points
                risk = self._risk_text(iid)
                if risk:
                    st += f" · {risk}"
            return f"{rec.name}\n{st}"
        if role == Qt.ItemDataRole.DecorationRole:
            pm = self.thumbs.get(iid)
            if pm is None:
                if not rec.missing and iid not in self.problems:
                    self.loader.request(iid, rec.path)
                return self._placeholder
            return pm
        if role == Qt.ItemDataRole.ForegroundRole:
            st = self.status(iid)
            t = self.triage().get(iid) if st == "predicted" else None
            if t is not None:   # ranked within the folder: the worst stand out, not all red
                return QBrush(QColor(TRIAGE_COLORS[t[1]]))
            return QBrush(QColor(STATUS_COLORS.get(st, "#cccccc")))
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
                t = self.triage().get(iid)
                if t is not None:
                    tip += (f"\nexpected error of its 3 most doubtful points: "
                            f"{self._risk_text(iid)}; triage: {t[1]} in this folder")
            return tip
        if role == ID_ROLE:
            return iid
        if role == STATUS_ROLE:
            return self.status(iid)
        if role == RISK_ROLE:
            t = self.triage().get(iid)
            return t[0] if t is not None else float("nan")
        return None

    def row_of(self, image_id: int) -> int:
        try:
            return self.ids.index(image_id)
        except ValueError:
            return -1

    def refresh_ids(self, ids: list[int] | None = None) -> None:
        self._triage = None     # ranks are within the folder: any change can move them
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

    def lessThan(self, left: QModelIndex | QPersistentModelIndex,
                 right: QModelIndex | QPersistentModelIndex) -> bool:
        """Worst first: larger image expected error first; images with nothing to review last,
        in folder order."""
        a = self.sourceModel().data(left, RISK_ROLE)
        b = self.sourceModel().data(right, RISK_ROLE)
        a = -1.0 if a != a else float(a)
        b = -1.0 if b != b else float(b)
        if a == b:
            return left.row() < right.row()
        return a > b

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
        self.order = QComboBox()
        self.order.setObjectName("imageOrder")
        self.order.addItems(list(ORDERS))
        self.order.setToolTip(legend_html())
        self.legend = TrustLegend()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter by name")
        self.search.setClearButtonEnabled(True)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.order, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(top)
        lay.addWidget(self.search)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.legend)
        self.order.currentIndexChanged.connect(self._apply_order)
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

    def _apply_order(self) -> None:
        """Worst first sorts by the image expected error (the proxy's lessThan); the folder
        order is the model's own (sort column -1)."""
        if self.order.currentIndex() == 1:
            self.proxy.sort(0)
        else:
            self.proxy.sort(-1)

    def _points_changed(self, image_id: int) -> None:
        # every image's rank can move when one image's points change
        self.model.refresh_ids(None)
        if self.proxy.statuses is not None:
            self.proxy.refilter()
        if self.order.currentIndex() == 1:
            self.proxy.invalidate()
            self.proxy.sort(0)

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
