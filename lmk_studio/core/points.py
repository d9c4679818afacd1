"""Landmark point states shared by the store, import/export, the engine glue and the GUI."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Status(str, Enum):
    """Where a landmark of one image stands in the user's workflow."""

    UNLABELLED = "unlabelled"
    EXEMPLAR = "exemplar"
    PREDICTED = "predicted"
    ACCEPTED = "accepted"
    CORRECTED = "corrected"
    ABSENT = "absent"

    @property
    def is_trusted(self) -> bool:
        """Trusted points are labels a human stands behind: they join Stage II's labelled set."""
        return self in (Status.EXEMPLAR, Status.ACCEPTED, Status.CORRECTED)


class Source(str, Enum):
    """What produced a point's coordinates."""

    MANUAL = "manual"
    IMPORTED = "imported"
    CLASSICAL = "classical"
    STAGE1 = "stage1"
    STAGE2 = "stage2"


@dataclass(frozen=True)
class LandmarkPoint:
    """One landmark of one image. x, y in float pixels, origin at the top-left pixel's centre."""

    index: int
    x: float | None
    y: float | None
    status: Status = Status.UNLABELLED
    source: Source | None = None
    confidence: float | None = None
    expected_error_px: float | None = None
    run_id: int | None = None

    @property
    def placed(self) -> bool:
        return self.x is not None and self.y is not None and self.status is not Status.ABSENT
