"""The legend under the image list: what the triage colours and the numbers mean, with units.

Why: a list of bare numbers in red ("0.00-0.13") told a new user nothing; the colours are ranks
within the folder (engine.trust.triage_levels) and the number is an expected error in px (mm
when the spacing is known), so the legend says exactly that.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QWidget

from lmk_studio.engine import trust

TRIAGE_COLORS = {"worst": "#ff4d4d", "doubtful": "#ffb000", "fine": "#2ecc40"}


def legend_html() -> str:
    """The legend's text (rich text), also used as the list's tooltip."""
    w = round(100 * trust.TRIAGE_WORST)
    d = round(100 * trust.TRIAGE_DOUBTFUL)

    def sw(level: str) -> str:
        return f"<span style='color:{TRIAGE_COLORS[level]}'>&#9632;</span>"

    return (f"<b>Predicted images, worst first</b><br>"
            f"{sw('worst')} the {w} % most likely wrong &nbsp; "
            f"{sw('doubtful')} the next {d} % &nbsp; {sw('fine')} the rest<br>"
            "<i>E</i> = expected error of the image's 3 most doubtful points, in px "
            "(mm when the pixel spacing is known); colours rank images within this folder.")


class TrustLegend(QLabel):
    """A word-wrapped rich-text label; no state of its own."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(legend_html(), parent)
        self.setObjectName("trustLegend")
        self.setWordWrap(True)
        self.setStyleSheet("font-size: 10px;")
