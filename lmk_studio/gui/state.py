"""The open document: project, current image, current landmark, cached points. No widgets.

Every view reads points through here and every edit goes through the store (via undo.py), then
calls `invalidate(image_id)` so views redraw. The store is the single source of truth; the cache
only saves SQLite round-trips on repaint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from lmk_studio.core.points import LandmarkPoint, Status

REVIEWED = (Status.ACCEPTED, Status.CORRECTED, Status.ABSENT)


def image_status(points: list[LandmarkPoint], is_exemplar: bool, missing: bool = False) -> str:
    """One word per image for the list and its filter."""
    if missing:
        return "missing"
    if is_exemplar:
        return "exemplar"
    statuses = [p.status for p in points]
    if any(s is Status.CORRECTED for s in statuses):
        done = all(s in REVIEWED for s in statuses)
        return "corrected" if done else "predicted"
    if statuses and all(s in REVIEWED for s in statuses):
        return "reviewed"
    if any(s is Status.PREDICTED for s in statuses):
        return "predicted"
    if any(s is not Status.UNLABELLED for s in statuses):
        return "in progress"
    return "unlabelled"


@dataclass(frozen=True)
class ReviewSummary:
    images_total: int
    images_reviewed: int
    points_total: int
    points_reviewed: int


class Document(QObject):
    """Current project + selection, with change signals for the views."""

    project_changed = Signal()
    image_changed = Signal(int)  # image id (-1 for none)
    landmark_changed = Signal(int)  # landmark index
    points_changed = Signal(int)  # image id, or -1 for "all images"
    images_changed = Signal()
    error = Signal(str, object)  # title, exception: a failed edit, shown in words by the window

    def __init__(self) -> None:
        super().__init__()
        self.project: Any = None
        self.image_id: int | None = None
        self.landmark: int = 0
        self._points: dict[int, list[LandmarkPoint]] = {}
        self._records: dict[int, Any] = {}
        self._tally: dict[int, tuple[int, int]] = {}  # image -> (predicted-origin, settled)
        self._exemplar: int | None | bool = False  # False = not read yet

    # ----- project
    def set_project(self, project: Any) -> None:
        old = self.project
        self.project = project
        self._points.clear()
        self._tally.clear()
        self._exemplar = False
        self._records = {r.id: r for r in project.images()} if project is not None else {}
        self.image_id = None
        self.landmark = 0
        self.project_changed.emit()
        if old is not None and old is not project:
            old.close()

    @property
    def path(self) -> Path | None:
        return Path(self.project.path) if self.project is not None else None

    @property
    def n_landmarks(self) -> int:
        return len(self.project.template) if self.project is not None else 0

    def names(self) -> list[str]:
        return list(self.project.template.names) if self.project is not None else []

    def records(self) -> list[Any]:
        return list(self._records.values())

    def record(self, image_id: int) -> Any:
        return self._records[image_id]

    def refresh_files(self) -> None:
        """Re-check the image files on disk (moved, deleted, changed), then reload."""
        if self.project is not None and hasattr(self.project, "refresh_files"):
            self.project.refresh_files()
        self.reload_images()

    def reload_images(self) -> None:
        self._records = {r.id: r for r in self.project.images()} if self.project else {}
        self._points.clear()
        self._tally.clear()
        self._exemplar = False
        self.images_changed.emit()

    @property
    def exemplar_id(self) -> int | None:
        """Cached: every row of the image list asks; any point change re-reads it."""
        if self.project is None:
            return None
        if self._exemplar is False:
            self._exemplar = self.project.exemplar_id
        return self._exemplar  # type: ignore[return-value]

    # ----- selection
    def set_image(self, image_id: int | None) -> None:
        if image_id == self.image_id:
            return
        self.image_id = image_id
        self.image_changed.emit(-1 if image_id is None else image_id)
        nxt = self.next_unplaced(-1) if image_id is not None else None
        self.set_landmark(nxt if nxt is not None else 0)

    def set_landmark(self, index: int) -> None:
        if self.n_landmarks == 0:
            return
        index = max(0, min(self.n_landmarks - 1, index))
        self.landmark = index
        self.landmark_changed.emit(index)

    # ----- points
    def points(self, image_id: int | None = None) -> list[LandmarkPoint]:
        image_id = self.image_id if image_id is None else image_id
        if image_id is None or self.project is None:
            return []
        pts = self._points.get(image_id)
        if pts is None:
            pts = self.project.points(image_id)
            self._points[image_id] = pts
        return pts

    def all_points(self) -> dict[int, list[LandmarkPoint]]:
        if self.project is None:
            return {}
        missing = [i for i in self._records if i not in self._points]
        if len(missing) > 16:  # one query for many; a single edit re-reads just its image
            self._points.update(self.project.all_points())
        else:
            for i in missing:
                self._points[i] = self.project.points(i)
        return {i: self._points[i] for i in self._records if i in self._points}

    def invalidate(self, image_ids: Iterable[int] | int | None = None) -> None:
        """Drop cached points (None = all images, e.g. after a training run) and notify."""
        self._exemplar = False
        if image_ids is None:
            self._points.clear()
            self._tally.clear()
            self.points_changed.emit(-1)
            return
        ids = [image_ids] if isinstance(image_ids, int) else list(image_ids)
        for i in ids:
            self._points.pop(i, None)
            self._tally.pop(i, None)
        for i in ids:
            self.points_changed.emit(i)

    def next_unplaced(self, after: int) -> int | None:
        """The next landmark after `after` that is neither placed nor absent (wrapping)."""
        pts = self.points()
        n = len(pts)
        for k in range(1, n + 1):
            i = (after + k) % n
            if pts[i].status is Status.UNLABELLED:
                return i
        return None

    def exemplar_complete(self) -> bool:
        ex = self.exemplar_id
        if ex is None:
            return False
        pts = self.points(ex)
        return bool(pts) and all(p.status in (Status.EXEMPLAR, Status.ABSENT) for p in pts)

    def image_status(self, image_id: int) -> str:
        rec = self._records.get(image_id)
        return image_status(self.points(image_id), image_id == self.exemplar_id,
                            bool(rec is not None and rec.missing))

    def review_summary(self) -> ReviewSummary:
        """Images/points that came from a prediction and what share a human has settled."""
        ex = self.exemplar_id
        img_tot = img_done = pt_tot = pt_done = 0
        if len(self._tally) < len(self._records):
            self.all_points()
        for iid in self._records:
            if iid == ex:
                continue
            t = self._tally.get(iid)
            if t is None:
                pts = self.points(iid)
                cand = sum(p.status is not Status.UNLABELLED for p in pts)
                t = (cand, sum(p.status in REVIEWED for p in pts))
                self._tally[iid] = t
            cand, done = t
            if not cand:
                continue
            img_tot += 1
            pt_tot += cand
            pt_done += done
            if done == cand:
                img_done += 1
        return ReviewSummary(img_tot, img_done, pt_tot, pt_done)

    def spacing(self, image_id: int | None = None) -> tuple[float, float] | None:
        image_id = self.image_id if image_id is None else image_id
        if image_id is None or image_id not in self._records:
            return None
        return self._records[image_id].spacing
