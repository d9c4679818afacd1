"""Image decoding off the GUI thread: full images for the canvas, thumbnails for the list.

Decoding a large DICOM or 16-bit TIFF takes long enough to stutter the UI, so it runs in a
QThreadPool; results come back as queued signals. Failures come back as words naming the file.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from lmk_studio.core.errors import LmkError

log = logging.getLogger(__name__)


def _describe(path: Path, exc: BaseException) -> str:
    if isinstance(exc, LmkError):
        return str(exc)
    return f"{path}: {type(exc).__name__}: {exc}"


class _Signals(QObject):
    loaded = Signal(int, object, int)  # image id, payload, generation
    failed = Signal(int, str, int)


class _Job(QRunnable):
    def __init__(self, fn, image_id: int, path: Path, generation: int, signals: _Signals) -> None:
        super().__init__()
        self.fn, self.image_id, self.path, self.gen, self.signals = fn, image_id, path, generation, signals
        self.setAutoDelete(True)

    def run(self) -> None:
        try:
            out = self.fn(self.path)
        except Exception as exc:  # reported to the GUI in words, and logged with its traceback
            log.warning("could not load %s", self.path, exc_info=True)
            self.signals.failed.emit(self.image_id, _describe(self.path, exc), self.gen)
            return
        self.signals.loaded.emit(self.image_id, out, self.gen)


def load_xray(path: Path) -> Any:
    from lmk_studio.core.images import load_image

    return load_image(path)


def make_thumbnail(path: Path, size: int = 96) -> QImage:
    """A small 8-bit preview; QImage (not QPixmap) so it may be built off the GUI thread."""
    import cv2

    img = load_xray(path)
    u8 = np.ascontiguousarray(img.to_uint8())
    h, w = u8.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(u8, (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    small = np.ascontiguousarray(small)
    q = QImage(small.data, small.shape[1], small.shape[0], small.strides[0],
               QImage.Format.Format_Grayscale8)
    return q.copy()


class ImageLoader(QObject):
    """Loads full images for the canvas with a small LRU cache; only the latest request wins."""

    loaded = Signal(int, object)  # image id, XrayImage
    failed = Signal(int, str)

    def __init__(self, cache_items: int = 4, pool: QThreadPool | None = None) -> None:
        super().__init__()
        self._pool = pool or QThreadPool.globalInstance()
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._cache_items = cache_items
        self._gen = 0
        self._want: int | None = None
        self._signals = _Signals()
        self._signals.loaded.connect(self._on_loaded)
        self._signals.failed.connect(self._on_failed)

    def clear(self) -> None:
        self._cache.clear()
        self._gen += 1
        self._want = None

    def request(self, image_id: int, path: Path) -> None:
        self._want = image_id
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            self.loaded.emit(image_id, self._cache[image_id])
            return
        self._gen += 1
        self._pool.start(_Job(load_xray, image_id, Path(path), self._gen, self._signals))

    def prefetch(self, image_id: int, path: Path) -> None:
        if image_id not in self._cache:
            self._pool.start(_Job(load_xray, image_id, Path(path), -1, self._signals), -1)

    def cached(self, image_id: int) -> Any | None:
        return self._cache.get(image_id)

    def _on_loaded(self, image_id: int, img: Any, gen: int) -> None:
        self._cache[image_id] = img
        self._cache.move_to_end(image_id)
        while len(self._cache) > self._cache_items:
            self._cache.popitem(last=False)
        if image_id == self._want and (gen == self._gen or gen == -1):
            self.loaded.emit(image_id, img)

    def _on_failed(self, image_id: int, message: str, gen: int) -> None:
        if image_id == self._want and gen != -1:
            self.failed.emit(image_id, message)


class ThumbnailLoader(QObject):
    """Thumbnails on demand (the list asks only for rows it paints), one job per image."""

    ready = Signal(int, QImage)
    failed = Signal(int, str)

    def __init__(self, size: int = 96, pool: QThreadPool | None = None) -> None:
        super().__init__()
        self.size = size
        self._pool = pool or QThreadPool.globalInstance()
        self._pending: set[int] = set()
        self._gen = 0
        self._signals = _Signals()
        self._signals.loaded.connect(self._on_loaded)
        self._signals.failed.connect(self._on_failed)

    def clear(self) -> None:
        self._gen += 1
        self._pending.clear()

    def request(self, image_id: int, path: Path) -> None:
        if image_id in self._pending:
            return
        self._pending.add(image_id)
        size = self.size
        # Lower priority than the canvas image so the current image always comes first.
        self._pool.start(_Job(lambda p: make_thumbnail(p, size), image_id, Path(path), self._gen,
                              self._signals), -2)

    def _on_loaded(self, image_id: int, img: QImage, gen: int) -> None:
        if gen != self._gen:
            return
        self._pending.discard(image_id)
        self.ready.emit(image_id, img)

    def _on_failed(self, image_id: int, message: str, gen: int) -> None:
        if gen != self._gen:
            return
        self._pending.discard(image_id)
        self.failed.emit(image_id, message)
