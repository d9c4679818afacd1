"""Every edit is a QUndoCommand whose redo() writes through the store at once (no Save button).

A whole drag is one MovePoint (pushed when the drag finishes). Undo restores the exact previous
row (status, source, confidence, run id), so accepting and then undoing gives the prediction back.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtGui import QUndoCommand

from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.gui.state import Document


def restore_point(project, image_id: int, p: LandmarkPoint) -> None:
    """Write `p` back exactly as it was."""
    if p.status is Status.UNLABELLED or (p.x is None and p.status is not Status.ABSENT):
        project.clear_point(image_id, p.index)
    elif p.status is Status.ABSENT:
        project.mark_absent(image_id, p.index)
    else:
        project.set_point(image_id, p.index, p.x, p.y, status=p.status, source=p.source,
                          confidence=p.confidence, expected_error_px=p.expected_error_px,
                          run_id=p.run_id)


class SafeCommand(QUndoCommand):
    """redo()/undo() never raise into Qt: a failed write (disk full, locked file) is reported
    through `doc.error`, the store is unchanged (each write is one transaction) and the command
    is made obsolete so Qt drops it instead of keeping a step that did not happen."""

    doc: Document
    error: BaseException | None = None

    def _do(self) -> None:
        raise NotImplementedError

    def _undo(self) -> None:
        raise NotImplementedError

    def _guard(self, fn, what: str) -> None:
        try:
            fn()
        except Exception as exc:  # reported to the user in words, never swallowed
            self.error = exc
            self.setObsolete(True)
            self.doc.invalidate(None)
            self.doc.error.emit(f"Could not {what} “{self.text()}”", exc)

    def redo(self) -> None:
        self._guard(self._do, "do")

    def undo(self) -> None:
        self._guard(self._undo, "undo")


class _PointCommand(SafeCommand):
    def __init__(self, doc: Document, image_id: int, index: int, text: str) -> None:
        name = doc.names()[index] if 0 <= index < doc.n_landmarks else str(index)
        super().__init__(f"{text} {name}")
        self.doc = doc
        self.image_id = image_id
        self.index = index
        self.old: LandmarkPoint = doc.project.points(image_id)[index]

    def _undo(self) -> None:
        restore_point(self.doc.project, self.image_id, self.old)
        self.doc.invalidate(self.image_id)


def _placed_status(doc: Document, image_id: int, old: LandmarkPoint) -> Status:
    """On the exemplar (or an image becoming it) points are EXEMPLAR, elsewhere CORRECTED."""
    ex = doc.exemplar_id
    if ex is None or ex == image_id or old.status is Status.EXEMPLAR:
        return Status.EXEMPLAR
    return Status.CORRECTED


class PlacePoint(_PointCommand):
    """Click: put the landmark at (x, y)."""

    def __init__(self, doc: Document, image_id: int, index: int, x: float, y: float) -> None:
        super().__init__(doc, image_id, index, "Place")
        self.x, self.y = float(x), float(y)
        self.status = _placed_status(doc, image_id, self.old)

    def _do(self) -> None:
        self.doc.project.set_point(self.image_id, self.index, self.x, self.y, status=self.status,
                                   source=Source.MANUAL)
        self.doc.invalidate(self.image_id)


class MovePoint(_PointCommand):
    """A finished drag. A predicted or accepted point becomes CORRECTED; exemplar stays exemplar."""

    def __init__(self, doc: Document, image_id: int, index: int, x: float, y: float) -> None:
        super().__init__(doc, image_id, index, "Move")
        self.x, self.y = float(x), float(y)
        self.status = _placed_status(doc, image_id, self.old)

    def _do(self) -> None:
        self.doc.project.set_point(self.image_id, self.index, self.x, self.y, status=self.status,
                                   source=Source.MANUAL)
        self.doc.invalidate(self.image_id)


class MarkAbsent(_PointCommand):
    def __init__(self, doc: Document, image_id: int, index: int) -> None:
        super().__init__(doc, image_id, index, "Mark absent")

    def _do(self) -> None:
        self.doc.project.mark_absent(self.image_id, self.index)
        self.doc.invalidate(self.image_id)


class ClearPoint(_PointCommand):
    def __init__(self, doc: Document, image_id: int, index: int) -> None:
        super().__init__(doc, image_id, index, "Clear")

    def _do(self) -> None:
        self.doc.project.clear_point(self.image_id, self.index)
        self.doc.invalidate(self.image_id)


class AcceptPoints(SafeCommand):
    """Accept one or several predicted points of one image (keeps x, y; status ACCEPTED)."""

    def __init__(self, doc: Document, image_id: int, indices: Sequence[int]) -> None:
        pts = doc.project.points(image_id)
        self.old = [pts[i] for i in indices if pts[i].status is Status.PREDICTED]
        text = ("Accept " + doc.names()[self.old[0].index]) if len(self.old) == 1 else (
            f"Accept {len(self.old)} points of {doc.record(image_id).name}")
        super().__init__(text)
        self.doc = doc
        self.image_id = image_id

    def _do(self) -> None:
        if self.old:
            rows = [(self.image_id, LandmarkPoint(p.index, p.x, p.y, Status.ACCEPTED, p.source,
                                                  p.confidence, p.expected_error_px, p.run_id))
                    for p in self.old]
            self.doc.project.set_points(rows)
        self.doc.invalidate(self.image_id)

    def _undo(self) -> None:
        if self.old:
            self.doc.project.set_points([(self.image_id, p) for p in self.old])
        self.doc.invalidate(self.image_id)


class Calibrate(SafeCommand):
    """Two-point calibration: sets mm/px (isotropic) for one image or the project default."""

    def __init__(self, doc: Document, spacing_mm: float, image_id: int | None,
                 old: tuple[float, float] | None) -> None:
        where = "project" if image_id is None else doc.record(image_id).name
        super().__init__(f"Calibrate {where}: {spacing_mm:.4f} mm/px")
        self.doc = doc
        self.spacing = (float(spacing_mm), float(spacing_mm))
        self.image_id = image_id
        self.old = old

    def _do(self) -> None:
        self.doc.project.set_calibration(self.spacing, image_id=self.image_id)
        self.doc.reload_images()

    def _undo(self) -> None:
        self.doc.project.set_calibration(self.old, image_id=self.image_id)
        self.doc.reload_images()


class SetExemplar(SafeCommand):
    """Make another image the exemplar; undo restores both images' points exactly."""

    def __init__(self, doc: Document, image_id: int) -> None:
        super().__init__(f"Use {doc.record(image_id).name} as exemplar")
        self.doc = doc
        self.new = image_id
        self.old = doc.exemplar_id
        ids = [i for i in (self.new, self.old) if i is not None]
        self.snap = {i: doc.project.points(i) for i in ids}

    def _do(self) -> None:
        self.doc.project.set_exemplar(self.new)
        self.doc.invalidate(list(self.snap))

    def _undo(self) -> None:
        self.doc.project.set_exemplar(self.old)
        for iid, pts in self.snap.items():
            for p in pts:
                restore_point(self.doc.project, iid, p)
        self.doc.invalidate(list(self.snap))
