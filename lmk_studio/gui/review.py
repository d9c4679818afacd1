"""Review queue: predicted points ordered by lowest confidence (images, then landmarks within).

Next/previous walk the pending (still PREDICTED) points; accepting or correcting a point removes
it from the queue, and "next" then continues from the same place in the order.
"""

from __future__ import annotations

import bisect
import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QGridLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core.points import LandmarkPoint, Status
from lmk_studio.gui.canvas import confidence_color
from lmk_studio.gui.state import Document

Item = tuple[int, int]  # (image id, landmark index)


def _conf(p: LandmarkPoint) -> float:
    c = p.confidence
    return c if c is not None and math.isfinite(c) else -1.0  # unknown first: look at it


def review_queue(points: dict[int, list[LandmarkPoint]], exemplar: int | None
                 ) -> list[tuple[int, list[LandmarkPoint]]]:
    """[(image id, pending points by rising confidence)] with images by their lowest one."""
    out = []
    for iid, pts in points.items():
        if iid == exemplar:
            continue
        pend = sorted((p for p in pts if p.status is Status.PREDICTED and p.placed),
                      key=lambda p: (_conf(p), p.index))
        if pend:
            out.append((iid, pend))
    out.sort(key=lambda t: (_conf(t[1][0]), t[0]))
    return out


class ReviewPanel(QWidget):
    goto = Signal(int, int)
    accept_point = Signal()
    accept_image = Signal()
    retrain = Signal()
    next_step = Signal(str)  # the key of the next-step button (see set_next_step)

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.items: list[Item] = []
        self._rank: dict[Item, int] = {}
        self.cursor: Item | None = None
        self._last_pos = 0
        self.progress_label = QLabel()
        self.progress_label.setObjectName("reviewProgress")
        self.progress_label.setWordWrap(True)
        # the next step, always in view: a one-line hint and, where there is one, its button
        self.next_label = QLabel()
        self.next_label.setObjectName("nextStepHint")
        self.next_label.setWordWrap(True)
        self.next_button = QPushButton()
        self.next_button.setObjectName("nextStepButton")
        self.next_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.next_button.hide()
        self._next_key = ""
        self.next_button.clicked.connect(lambda: self.next_step.emit(self._next_key))
        self.progress_bar = QProgressBar()
        self.tree = QTreeWidget()
        self.tree.setObjectName("reviewTree")
        self.tree.setHeaderLabels(["Image / landmark", "Confidence"])
        self.tree.setColumnWidth(0, 170)
        self.tree.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.tree.itemClicked.connect(self._clicked)
        self.tree.itemExpanded.connect(self._populate)
        self._groups: dict[int, list[LandmarkPoint]] = {}
        self._tops: dict[int, QTreeWidgetItem] = {}
        self.prev_btn = QPushButton("◀ Previous")
        self.next_btn = QPushButton("Next ▶")
        self.accept_btn = QPushButton("Accept point")
        self.accept_all_btn = QPushButton("Accept image")
        self.retrain_btn = QPushButton("Retrain with my corrections")
        self.retrain_btn.setToolTip("Start a Stage II run that learns from the points you "
                                    "accepted or corrected")
        self.prev_btn.clicked.connect(self.previous)
        self.next_btn.clicked.connect(self.next)
        self.accept_btn.clicked.connect(self.accept_point)
        self.accept_all_btn.clicked.connect(self.accept_image)
        self.retrain_btn.clicked.connect(self.retrain)
        grid = QGridLayout()
        grid.addWidget(self.prev_btn, 0, 0)
        grid.addWidget(self.next_btn, 0, 1)
        grid.addWidget(self.accept_btn, 1, 0)
        grid.addWidget(self.accept_all_btn, 1, 1)
        grid.addWidget(self.retrain_btn, 2, 0, 1, 2)
        for b in (self.prev_btn, self.next_btn, self.accept_btn, self.accept_all_btn,
                  self.retrain_btn):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.next_label)
        lay.addWidget(self.next_button)
        lay.addWidget(self.progress_label)
        lay.addWidget(self.progress_bar)
        lay.addLayout(grid)
        lay.addWidget(self.tree, 1)
        doc.project_changed.connect(self.reset_order)
        doc.points_changed.connect(self._points_changed)
        doc.images_changed.connect(self.refresh)

    def set_next_step(self, hint: str, button: str | None = None, key: str = "") -> None:
        """What to do next, in one line, and the button that does it (None: no button)."""
        self.next_label.setText(hint)
        self._next_key = key
        self.next_button.setVisible(bool(button))
        if button:
            self.next_button.setText(button)

    def reset_order(self) -> None:
        """Order afresh by confidence (new project or new predictions). Between resets the
        order stays put, so accepting a point never reshuffles what comes next."""
        self._rank = {}
        self.cursor = None
        self._last_pos = 0
        self.refresh()

    def refresh(self) -> None:
        if self.cursor in self.items:
            self._last_pos = self.items.index(self.cursor)
        queue = review_queue(self.doc.all_points(), self.doc.exemplar_id) \
            if self.doc.project is not None else []
        by_item = {(iid, p.index): p for iid, pts in queue for p in pts}
        flat = [(iid, p.index) for iid, pts in queue for p in pts]
        if any(it not in self._rank for it in flat):
            self._rank = {it: r for r, it in enumerate(flat)}
        else:
            flat.sort(key=self._rank.__getitem__)
        self.items = flat
        grouped: list[tuple[int, list[LandmarkPoint]]] = []
        for iid, k in flat:
            if not grouped or grouped[-1][0] != iid:
                grouped.append((iid, []))
            grouped[-1][1].append(by_item[(iid, k)])
        # Children are made when an image is expanded: a big project's queue has tens of
        # thousands of points, and rebuilding them all after every click would stall the UI.
        expanded = {self.tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole)[0]
                    for i in range(self.tree.topLevelItemCount())
                    if self.tree.topLevelItem(i).isExpanded()}
        if self.cursor is not None:
            expanded.add(self.cursor[0])
        self._groups = dict(grouped)
        self.tree.clear()
        self._tops = {}
        tops = []
        for iid, pts in grouped:
            top = QTreeWidgetItem()
            self._fill_top(top, iid, pts)
            tops.append(top)
            self._tops[iid] = top
        self.tree.addTopLevelItems(tops)
        for top in tops:
            if top.data(0, Qt.ItemDataRole.UserRole)[0] in expanded:
                top.setExpanded(True)
        self._update_summary()

    def _fill_top(self, top: QTreeWidgetItem, iid: int, pts: list[LandmarkPoint]) -> None:
        top.setText(0, f"{self.doc.record(iid).name} ({len(pts)})")
        worst = min(pts, key=_conf)
        top.setText(1, f"{_conf(worst):.2f}")
        top.setData(0, Qt.ItemDataRole.UserRole, (iid, pts[0].index))
        top.setForeground(1, QBrush(QColor(confidence_color(worst.confidence))))
        top.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)

    def _points_changed(self, image_id: int) -> None:
        if image_id == -1 or not self._rank:
            self.refresh()
        else:
            self.refresh_image(image_id)

    def refresh_image(self, iid: int) -> None:
        """One image changed (an accept, a drag): update its queue entries and tree row only."""
        if self.doc.project is None:
            return
        try:
            self.doc.record(iid)
        except KeyError:  # an image the list no longer has: rebuild from the store
            self.refresh()
            return
        if self.cursor in self.items:
            self._last_pos = self.items.index(self.cursor)
        pend = [] if iid == self.doc.exemplar_id else [
            p for p in self.doc.points(iid) if p.status is Status.PREDICTED and p.placed]
        new = [(iid, p.index) for p in pend]
        if any(it not in self._rank for it in new):
            self.refresh()  # points the order has never seen: order afresh
            return
        pend.sort(key=lambda p: self._rank[(iid, p.index)])
        self.items = [it for it in self.items if it[0] != iid]
        for it in new:
            bisect.insort(self.items, it, key=self._rank.__getitem__)
        top = self._tops.get(iid)
        if not pend:
            self._groups.pop(iid, None)
            if top is not None:
                self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(top))
                del self._tops[iid]
        else:
            self._groups[iid] = pend
            if top is None:
                top = QTreeWidgetItem()
                first = self._rank[(iid, pend[0].index)]
                pos = sum(1 for j, ps in self._groups.items()
                          if j != iid and self._rank[(j, ps[0].index)] < first)
                self._fill_top(top, iid, pend)
                self.tree.insertTopLevelItem(pos, top)
                self._tops[iid] = top
            else:
                self._fill_top(top, iid, pend)
                if top.childCount():
                    was = top.isExpanded()
                    top.takeChildren()
                    self._populate(top)
                    top.setExpanded(was)
        self._update_summary()

    def _update_summary(self) -> None:
        s = self.doc.review_summary() if self.doc.project is not None else None
        if s is None or s.points_total == 0:
            self.progress_label.setText("Nothing to review yet.")
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
        else:
            self.progress_label.setText(
                f"Reviewed: {s.images_reviewed} of {s.images_total} images, "
                f"{s.points_reviewed} of {s.points_total} landmarks")
            self.progress_bar.setRange(0, s.points_total)
            self.progress_bar.setValue(s.points_reviewed)
        has = bool(self.items)
        for b in (self.prev_btn, self.next_btn, self.accept_btn, self.accept_all_btn):
            b.setEnabled(has)

    def _populate(self, top: QTreeWidgetItem) -> None:
        if top.childCount():
            return
        iid = top.data(0, Qt.ItemDataRole.UserRole)[0]
        names = self.doc.names()
        children = []
        for p in self._groups.get(iid, []):
            c = "?" if _conf(p) < 0 else f"{_conf(p):.2f}"
            ch = QTreeWidgetItem([names[p.index], c])
            ch.setData(0, Qt.ItemDataRole.UserRole, (iid, p.index))
            ch.setForeground(1, QBrush(QColor(confidence_color(p.confidence))))
            children.append(ch)
        top.addChildren(children)

    def _clicked(self, item: QTreeWidgetItem, _col: int) -> None:
        data = item.data(0, Qt.ItemDataRole.UserRole)
        if data:
            self.go(tuple(data))

    def go(self, item: Item) -> None:
        self.cursor = (int(item[0]), int(item[1]))
        if self.cursor in self.items:
            self._last_pos = self.items.index(self.cursor)
        self._show_cursor()
        self.goto.emit(*self.cursor)

    def _show_cursor(self) -> None:
        """Open the reviewed image's row and highlight the landmark under review."""
        top = self._tops.get(self.cursor[0]) if self.cursor else None
        if top is None:
            return
        top.setExpanded(True)  # builds its children
        for r in range(top.childCount()):
            ch = top.child(r)
            if tuple(ch.data(0, Qt.ItemDataRole.UserRole)) == self.cursor:
                self.tree.setCurrentItem(ch)
                self.tree.scrollToItem(ch)
                break

    def next(self) -> Item | None:
        if not self.items:
            return None
        if self.cursor in self.items:
            i = self.items.index(self.cursor) + 1
        else:
            i = self._last_pos  # the current one left the queue: its successor took its place
        self.go(self.items[i % len(self.items)])
        return self.cursor

    def previous(self) -> Item | None:
        if not self.items:
            return None
        i = (self.items.index(self.cursor) if self.cursor in self.items else self._last_pos) - 1
        self.go(self.items[i % len(self.items)])
        return self.cursor

    def set_cursor(self, image_id: int, index: int) -> None:
        """Follow the user's own selection so next/previous continue from where they look."""
        self.cursor = (image_id, index)
        if self.cursor in self.items:
            self._last_pos = self.items.index(self.cursor)
