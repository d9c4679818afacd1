"""Stage I results reach the store as PREDICTED / STAGE1 with confidence, and never replace the
exemplar, an accepted or corrected point, or a point marked absent."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.engine.stage1.job import _write
from lmk_studio.engine.stage1.pipeline import Stage1Result


class FakeProject:
    """The few store calls _write makes (core.store contract), in memory."""

    def __init__(self, points: dict[int, list[LandmarkPoint]]) -> None:
        self._points = points
        self.history: list = []
        self.path = Path("fake.lmk")

    def points(self, image_id: int) -> list[LandmarkPoint]:
        return self._points[image_id]

    def record_predictions(self, run_id: int, rows) -> None:
        self.history.extend(rows)

    def set_points(self, rows, keep_human: bool = False) -> int:
        n = 0
        for iid, lp in rows:
            cur = self._points[iid][lp.index]
            if keep_human and (cur.status.is_trusted or cur.status is Status.ABSENT):
                continue
            self._points[iid][lp.index] = lp
            n += 1
        return n


def test_write_keeps_trusted_and_absent_points() -> None:
    n = 3
    ex = [LandmarkPoint(j, 1.0 * j, 2.0, Status.EXEMPLAR, Source.MANUAL) for j in range(n)]
    tgt = [LandmarkPoint(0, 5.0, 5.0, Status.CORRECTED, Source.MANUAL),
           LandmarkPoint(1, None, None, Status.ABSENT),
           LandmarkPoint(2, None, None)]
    proj = FakeProject({1: ex, 2: tgt})
    pts = np.array([[[0, 2], [1, 2], [2, 2]], [[9, 9], [8, 8], [7, 7]]], dtype=float)
    res = Stage1Result(points=pts, confidence=np.full((2, n), 0.5),
                       step_disagreement_px=np.zeros((2, n)))
    written = _write(proj, 7, [SimpleNamespace(id=1), SimpleNamespace(id=2)], 0, res)
    assert written == 1
    after = proj.points(2)
    assert after[0].status is Status.CORRECTED and after[0].x == 5.0
    assert after[1].status is Status.ABSENT
    assert after[2].status is Status.PREDICTED and after[2].source is Source.STAGE1
    assert (after[2].x, after[2].y, after[2].confidence, after[2].run_id) == (7.0, 7.0, 0.5, 7)
    assert proj.points(1) == ex                       # the exemplar is never touched
    assert len(proj.history) == 3                     # the run's history keeps every prediction
