"""The image canvas: pyqtgraph ImageItem (row-major), landmark markers, window/level, calibration.

View coordinates equal landmark coordinates: the image is placed at (-0.5, -0.5) so that (0, 0)
is the centre of the top-left pixel, the convention of core.points. The canvas only draws and
reports gestures (place, move finished, select, calibration); the main window turns gestures into
undo commands, so every edit goes through one path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QHBoxLayout, QWidget

from lmk_studio.core.points import LandmarkPoint, Status

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

EXEMPLAR_COLOR = "#33aaff"
ACCEPTED_COLOR = "#e8e8e8"
CORRECTED_COLOR = "#d05cff"
GREEN, AMBER, RED = "#2ecc40", "#ffb000", "#ff3b30"
HIGH_CONF, LOW_CONF = 0.7, 0.4


def confidence_color(conf: float | None) -> str:
    """Green / amber / red by confidence; unknown confidence is amber (look at it)."""
    if conf is None or not math.isfinite(conf):
        return AMBER
    if conf >= HIGH_CONF:
        return GREEN
    if conf >= LOW_CONF:
        return AMBER
    return RED


def point_style(p: LandmarkPoint) -> tuple[str, str]:
    """(colour, symbol) for a point by status."""
    if p.status is Status.EXEMPLAR:
        return EXEMPLAR_COLOR, "s"
    if p.status is Status.PREDICTED:
        return confidence_color(p.confidence), "o"
    if p.status is Status.ACCEPTED:
        return ACCEPTED_COLOR, "o"
    if p.status is Status.CORRECTED:
        return CORRECTED_COLOR, "d"
    return AMBER, "o"


def describe_point(name: str, p: LandmarkPoint) -> str:
    """Hover text: name, status, confidence and expected error when known."""
    parts = [name, p.status.value]
    if p.source is not None:
        parts.append(f"from {p.source.value}")
    if p.confidence is not None and math.isfinite(p.confidence):
        parts.append(f"confidence {p.confidence:.2f}")
    if p.expected_error_px is not None and math.isfinite(p.expected_error_px):
        parts.append(f"expected error ~{p.expected_error_px:.1f} px")
    if p.x is not None and p.y is not None:
        parts.append(f"at ({p.x:.1f}, {p.y:.1f})")
    return " · ".join(parts)


class _ViewBox(pg.ViewBox):
    """Left click reports a placement (or a calibration click); drag pans; wheel zooms at cursor."""

    def __init__(self, canvas: Canvas) -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._canvas = canvas

    def mouseClickEvent(self, ev) -> None:
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            p = self.mapSceneToView(ev.scenePos())
            self._canvas._clicked(p.x(), p.y())
            return
        super().mouseClickEvent(ev)


class _Label(pg.TextItem):
    """A landmark's name beside its marker; transparent to the mouse, so a name lying over
    another landmark's spot never swallows the click that places it."""

    def __init__(self, marker: LandmarkItem, text: str, color: str) -> None:
        super().__init__(text=text, color=color, anchor=(-0.25, 1.05))
        self._marker = marker
        for item in (self, self.textItem):
            item.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
            item.setAcceptHoverEvents(False)


class LandmarkItem(pg.TargetItem):
    """A draggable landmark marker; a whole drag becomes one move (pushed on release)."""

    def __init__(self, canvas: Canvas, index: int, name: str, color: str) -> None:
        super().__init__(pos=(0, 0), size=13, symbol="o", movable=True)
        self.canvas = canvas
        self.index = index
        self.name = name
        self._start: QPointF | None = None
        self.label_item = _Label(self, name, color)
        self.label_item.setParentItem(self)
        self.sigPositionChangeFinished.connect(self._finished)
        self.setZValue(10)

    def mouseDragEvent(self, ev) -> None:
        if ev.button() == Qt.MouseButton.LeftButton and ev.isStart():
            self._start = QPointF(self.pos())
            self.canvas.landmark_clicked.emit(self.index)
        super().mouseDragEvent(ev)

    def mouseClickEvent(self, ev) -> None:
        if self.moving and ev.button() == Qt.MouseButton.RightButton:
            # Right click during a drag cancels it: back to where it was, nothing recorded.
            ev.accept()
            self.moving = False
            if self._start is not None:
                self.setPos(self._start)
            self._start = None
            return
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            if self.canvas.current_placed or self.canvas.mode != "place":
                self.canvas.landmark_clicked.emit(self.index)
            else:  # placing an unplaced landmark: a neighbour's marker must not swallow it
                p = self.mapToView(ev.pos())
                self.canvas._clicked(p.x(), p.y())

    def _finished(self, _item: Any) -> None:
        start, self._start = self._start, None
        if start is None:
            return
        p = self.pos()
        if (p - start).manhattanLength() < 1e-6:
            return
        self.canvas.point_moved.emit(self.index, float(p.x()), float(p.y()))


class Canvas(QWidget):
    """Image + landmarks + histogram/LUT (window/level) for one image at a time."""

    place_requested = Signal(float, float)
    point_moved = Signal(int, float, float)
    landmark_clicked = Signal(int)
    cursor_info = Signal(str)
    calibration_measured = Signal(float, float, float, float)  # x0, y0, x1, y1

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = pg.GraphicsView(background="#111111")
        self.vb = _ViewBox(self)
        self.view.setCentralItem(self.vb)
        self.image_item = pg.ImageItem()
        self.vb.addItem(self.image_item)
        self.hist = pg.HistogramLUTWidget(image=self.image_item)
        self.hist.setMinimumWidth(110)
        self.hist.setMaximumWidth(150)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.hist)
        self.pixels: np.ndarray | None = None
        self.default_levels: tuple[float, float] | None = None
        self.spacing: tuple[float, float] | None = None
        self.markers: list[LandmarkItem] = []
        self.current = 0
        self.current_placed = False
        self.labels_visible = True
        self.mode = "place"
        self._cal_points: list[tuple[float, float]] = []
        self._cal_line = pg.PlotDataItem(pen=pg.mkPen("#ffff00", width=2), symbol="+",
                                         symbolSize=14, symbolPen="#ffff00")
        self._cal_line.setZValue(20)
        self.vb.addItem(self._cal_line)
        self.overlays: dict[str, pg.ScatterPlotItem] = {}
        self.view.scene().sigMouseMoved.connect(self._mouse_moved)

    # ----- image
    def set_image(self, pixels: np.ndarray | None, levels: tuple[float, float] | None = None,
                  spacing: tuple[float, float] | None = None, fit: bool = True) -> None:
        self.pixels = pixels
        self.spacing = spacing
        if pixels is None:
            self.image_item.clear()
            return
        h, w = pixels.shape[:2]
        if levels is None:
            levels = default_levels(pixels)
        self.default_levels = levels
        self.image_item.setImage(pixels, autoLevels=False, levels=levels)
        self.image_item.setRect(QRectF(-0.5, -0.5, w, h))
        self.hist.setLevels(*levels)
        self.hist.setHistogramRange(float(np.nanmin(pixels)), float(np.nanmax(pixels)))
        if fit:
            self.fit()

    def reset_levels(self) -> None:
        """Back to the file's window (or the robust range) after playing with the histogram."""
        if self.pixels is not None and self.default_levels is not None:
            self.hist.setLevels(*self.default_levels)

    def levels(self) -> tuple[float, float]:
        lo, hi = self.hist.getLevels()
        return float(lo), float(hi)

    def fit(self) -> None:
        if self.pixels is None:
            return
        h, w = self.pixels.shape[:2]
        self.vb.setRange(QRectF(-0.5, -0.5, w, h), padding=0.02)

    def one_to_one(self) -> None:
        """One image pixel per screen pixel, keeping the view centre."""
        px = self.vb.viewPixelSize()[0]
        if px > 0:
            c = self.vb.viewRect().center()
            self.vb.scaleBy((1.0 / px, 1.0 / px), center=c)

    def zoom(self, factor: float) -> None:
        self.vb.scaleBy((1.0 / factor, 1.0 / factor))

    def center_on(self, x: float, y: float) -> None:
        r = self.vb.viewRect()
        self.vb.setRange(QRectF(x - r.width() / 2, y - r.height() / 2, r.width(), r.height()),
                         padding=0)

    def zoom_factor(self) -> float:
        """Screen pixels per image pixel."""
        px = self.vb.viewPixelSize()[0]
        return 1.0 / px if px > 0 else float("nan")

    # ----- landmarks
    def set_template(self, names: list[str], colors: list[str]) -> None:
        for m in self.markers:
            self.vb.removeItem(m)
        self.markers = [LandmarkItem(self, i, n, c) for i, (n, c) in enumerate(zip(names, colors, strict=True))]
        for m in self.markers:
            self.vb.addItem(m)
            m.setVisible(False)
            m.label_item.setVisible(self.labels_visible)

    def set_points(self, points: list[LandmarkPoint], current: int | None = None) -> None:
        if current is not None:
            self.current = current
        self.current_placed = any(p.index == self.current and p.placed for p in points)
        for m in self.markers[len(points):]:
            m.setVisible(False)
        for m, p in zip(self.markers, points, strict=False):
            if m.moving:
                continue  # never yank a point out from under the user's drag
            if not p.placed:
                m.setVisible(False)
                continue
            color, symbol = point_style(p)
            cur = m.index == self.current
            m.setSymbol(symbol)
            m.setPen(pg.mkPen(color, width=3 if cur else 1.6))
            q = QColor(color)
            m.setBrush(pg.mkBrush(q.red(), q.green(), q.blue(), 110 if cur else 40))
            m.setHoverPen(pg.mkPen("#ffffff", width=3))
            m.setPos(p.x, p.y)
            m.setToolTip(describe_point(m.name, p))
            m.label_item.setText(m.name)
            m.setVisible(True)

    def set_labels_visible(self, on: bool) -> None:
        """Names beside the points (off when they crowd a small anatomy)."""
        self.labels_visible = bool(on)
        for m in self.markers:
            m.label_item.setVisible(self.labels_visible)

    def set_current(self, index: int, points: list[LandmarkPoint]) -> None:
        self.set_points(points, current=index)

    def set_overlay(self, key: str, pts: np.ndarray | None, color: str, symbol: str) -> None:
        """Optional extra predictions (Stage I / Stage II of the latest runs), not editable."""
        item = self.overlays.get(key)
        if pts is None or len(pts) == 0:
            if item is not None:
                item.setData([], [])
                item.setVisible(False)
            return
        if item is None:
            item = pg.ScatterPlotItem(size=9, pen=pg.mkPen(color, width=1.5), brush=None,
                                      symbol=symbol, pxMode=True)
            item.setZValue(5)
            item.setAcceptHoverEvents(False)
            self.vb.addItem(item)
            self.overlays[key] = item
        ok = np.isfinite(pts).all(axis=1)
        item.setData(pts[ok, 0], pts[ok, 1])
        item.setVisible(True)

    # ----- gestures
    def set_mode(self, mode: str) -> None:
        """'place' (default) or 'calibrate' (two clicks, then the distance is asked for)."""
        self.mode = mode
        self._cal_points = []
        self._cal_line.setData([], [])
        self.view.setCursor(Qt.CursorShape.CrossCursor if mode == "calibrate"
                            else Qt.CursorShape.ArrowCursor)

    def _clicked(self, x: float, y: float) -> None:
        if self.pixels is None:
            return
        h, w = self.pixels.shape[:2]
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            return  # a click beside the image places nothing
        if self.mode == "calibrate":
            self._cal_points.append((x, y))
            xs = [p[0] for p in self._cal_points]
            ys = [p[1] for p in self._cal_points]
            self._cal_line.setData(xs, ys)
            if len(self._cal_points) == 2:
                (x0, y0), (x1, y1) = self._cal_points
                self.calibration_measured.emit(x0, y0, x1, y1)
            return
        self.place_requested.emit(x, y)

    def _mouse_moved(self, scene_pos: QPointF) -> None:
        if self.pixels is None:
            return
        p = self.vb.mapSceneToView(scene_pos)
        self.cursor_info.emit(self.describe_position(p.x(), p.y()))

    def describe_position(self, x: float, y: float) -> str:
        """'x, y px · value · mm' for the status bar (mm only when the spacing is known)."""
        if self.pixels is None:
            return ""
        h, w = self.pixels.shape[:2]
        c, r = int(round(x)), int(round(y))
        if not (0 <= c < w and 0 <= r < h):
            return ""
        v = float(self.pixels[r, c])
        vs = f"{v:.0f}" if v == int(v) else f"{v:.3f}"
        text = f"x {x:.1f}  y {y:.1f} px   value {vs}"
        if self.spacing is not None:
            sr, sc = self.spacing
            text += f"   ({x * sc:.2f}, {y * sr:.2f}) mm"
        return text

    # ----- test and screenshot helper
    def view_to_widget(self, x: float, y: float) -> QPoint:
        """Viewport widget coordinates of an image point (for mouse-driven tests)."""
        sp = self.vb.mapViewToScene(QPointF(x, y))
        return self.view.mapFromScene(sp)

    def widget_to_view(self, pos: QPoint) -> tuple[float, float]:
        p = self.vb.mapSceneToView(self.view.mapToScene(pos))
        return float(p.x()), float(p.y())


def default_levels(pixels: np.ndarray, window: tuple[float, float] | None = None
                   ) -> tuple[float, float]:
    """Window (centre, width) when the file gives one, else a robust 0.5-99.5 % range."""
    if window is not None and window[1] > 0:
        c, wd = window
        return float(c - wd / 2), float(c + wd / 2)
    finite = pixels[np.isfinite(pixels)]
    if finite.size == 0:
        return 0.0, 1.0
    sample = finite[:: max(1, finite.size // 200_000)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max()) + 1e-6
    return float(lo), float(hi)


