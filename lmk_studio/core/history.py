"""Runs side by side: which run the current points come from, whether it is older than the
user's edits, how runs compare, and going back to an earlier run's points.

Every run keeps its own points (``Project.record_predictions``), while the current points are one
table that each job overwrites (never a human's point). That split lets the app show every run,
notice that the active one was made from an exemplar that has since changed, refuse to switch
silently to a run that looks worse, and write an earlier run's points back as the current ones.
Qt- and torch-free so the CLI and tests can use it too.

What a run "used" is recorded by the app when it starts a job (``fingerprint``), in the
project's meta under ``INPUTS_KEY``: the exemplar's points, and, for the runs that learn from
them (Stage II), the user's accepted / corrected / absent points. A run is stale when one of those
has changed since; points the user accepted after it are new evidence, not a change.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from lmk_studio.core.points import LandmarkPoint, Status

#: project meta key: {run id (str): fingerprint of what it was started from}
INPUTS_KEY = "gui.run_inputs"
#: run kinds whose training reads the user's trusted points besides the exemplar (Stage I too
#: once it fuses them: a changed reviewed point then dates it; new ones never do)
LEARNS_FROM_TRUSTED = ("stage1", "stage2", "stage2-predict")
FINISHED = "finished"
METHOD_WORDS = {
    "classical": "Preview",
    "stage1": "Stage I",
    "stage1-predict": "Stage I (predict)",
    "stage2": "Stage II",
    "stage2-predict": "Stage II (predict)",
}
#: a run needs this many of the user's points in common with another to be judged on them
MIN_EVIDENCE = 3
#: "worse on the user's points": farther than old * WORSE_RATIO + WORSE_PX
WORSE_RATIO = 1.25
WORSE_PX = 1.0
#: "markedly lower confidence": below old - CONF_DROP and below old * CONF_RATIO
CONF_DROP = 0.15
CONF_RATIO = 0.75


def _key(p: LandmarkPoint) -> Any:
    """A point as JSON: [x, y] to 1/100 px, "absent", or None (not placed)."""
    if p.status is Status.ABSENT:
        return "absent"
    if p.x is None or p.y is None or p.status is Status.UNLABELLED:
        return None
    return [round(float(p.x), 2), round(float(p.y), 2)]


def fingerprint(points: Mapping[int, list[LandmarkPoint]], exemplar: int | None) -> dict:
    """What a run started now would use: the exemplar and its points, and every accepted,
    corrected or absent point of the other images (for the runs that learn from them)."""
    ex_pts = [_key(p) for p in points.get(exemplar, [])] if exemplar is not None else []
    trusted = {f"{iid}:{p.index}": _key(p) for iid, pts in points.items() if iid != exemplar
               for p in pts if p.status in (Status.ACCEPTED, Status.CORRECTED, Status.ABSENT)}
    return {"exemplar": exemplar, "points": ex_pts, "trusted": trusted}


def stale_reason(then: Mapping[str, Any], points: Mapping[int, list[LandmarkPoint]],
                 exemplar: int | None, names: list[str], learns_from_trusted: bool
                 ) -> str | None:
    """Why a run started from `then` is out of date with the points now, in words; None when
    nothing it used has changed."""
    if then.get("exemplar") != exemplar:
        return "the exemplar is another image now"
    now = fingerprint(points, exemplar)
    old_pts = list(then.get("points") or [])
    moved = [names[k] if k < len(names) else str(k)
             for k in range(max(len(old_pts), len(now["points"])))
             if (old_pts[k] if k < len(old_pts) else None)
             != (now["points"][k] if k < len(now["points"]) else None)]
    if moved:
        shown = ", ".join(moved[:3]) + (f" and {len(moved) - 3} more" if len(moved) > 3 else "")
        return f"exemplar point{'s' if len(moved) > 1 else ''} changed: {shown}"
    if learns_from_trusted:
        old_tr = then.get("trusted") or {}
        changed = sum(1 for k, v in old_tr.items() if now["trusted"].get(k) != v)
        if changed:
            return f"{changed} of the points it learned from changed"
    return None


def active_run(points: Mapping[int, list[LandmarkPoint]], exemplar: int | None) -> int | None:
    """The run most of the current predicted points come from (what the user sees)."""
    c = Counter(p.run_id for iid, pts in points.items() if iid != exemplar for p in pts
                if p.status is Status.PREDICTED and p.run_id is not None)
    return c.most_common(1)[0][0] if c else None


def _xy(p: LandmarkPoint) -> tuple[float, float] | None:
    if p.x is None or p.y is None or p.status is Status.ABSENT:
        return None
    return float(p.x), float(p.y)


def _index(preds: Mapping[int, list[LandmarkPoint]]) -> dict[tuple[int, int], LandmarkPoint]:
    return {(iid, p.index): p for iid, pts in preds.items() for p in pts if _xy(p)}


def _mean_dist(a: Mapping[tuple[int, int], LandmarkPoint],
               b: Mapping[tuple[int, int], LandmarkPoint]) -> tuple[float | None, int]:
    d = [math.dist(_xy(a[k]), _xy(b[k])) for k in a.keys() & b.keys()]  # type: ignore[arg-type]
    return (sum(d) / len(d) if d else None), len(d)


def user_points(points: Mapping[int, list[LandmarkPoint]], exemplar: int | None,
                not_from: set[int] | frozenset[int] = frozenset()
                ) -> dict[tuple[int, int], LandmarkPoint]:
    """The user's corrected points, and accepted ones not accepted from a run in `not_from`:
    a point accepted from run r equals r's prediction by construction and would score r 0 px."""
    return {(iid, p.index): p for iid, pts in points.items() if iid != exemplar for p in pts
            if _xy(p) and (p.status is Status.CORRECTED
                           or (p.status is Status.ACCEPTED and p.run_id not in not_from))}


@dataclass(frozen=True)
class RunSummary:
    """One row of the runs table."""

    run_id: int
    kind: str
    method: str
    finished: str | None
    n_points: int
    mean_confidence: float | None
    agreement_px: float | None     # mean distance to the active run's points (common ones)
    user_error_px: float | None    # mean distance to the user's own points (see user_points)
    n_user: int
    active: bool


def method_words(run: Any) -> str:
    words = METHOD_WORDS.get(run.kind, run.kind)
    preset = (run.config or {}).get("preset") if isinstance(run.config, dict) else None
    return f"{words}, {preset}" if preset and run.kind in ("stage1", "stage2") else words


def summarise(run: Any, preds: Mapping[int, list[LandmarkPoint]],
              active_preds: Mapping[int, list[LandmarkPoint]] | None,
              points: Mapping[int, list[LandmarkPoint]], exemplar: int | None,
              active: bool) -> RunSummary:
    """The figures of one run against the active run and the user's points."""
    mine = _index(preds)
    confs = [p.confidence for p in mine.values()
             if p.confidence is not None and math.isfinite(p.confidence)]
    agree = None
    if active_preds is not None and not active:
        agree, _ = _mean_dist(mine, _index(active_preds))
    err, n_user = _mean_dist(mine, user_points(points, exemplar, {run.id}))
    return RunSummary(run.id, run.kind, method_words(run), run.finished, len(mine),
                      sum(confs) / len(confs) if confs else None, agree, err, n_user, active)


def looks_worse(project: Any, new_id: int, old_id: int,
                points: Mapping[int, list[LandmarkPoint]], exemplar: int | None
                ) -> str | None:
    """Why run `new_id` looks worse than `old_id`, in words, or None.

    First on the user's own points both runs can be judged on (corrected ones, and accepted ones
    accepted from neither run): farther by a quarter plus a pixel. Without enough of those, on
    confidence: markedly lower mean confidence over the points both predicted.
    """
    new_p, old_p = _index(project.predictions(new_id)), _index(project.predictions(old_id))
    evidence = user_points(points, exemplar, {new_id, old_id})
    e_new, n = _mean_dist(new_p, evidence)
    e_old, _ = _mean_dist(old_p, evidence)
    if n >= MIN_EVIDENCE and e_new is not None and e_old is not None:
        if e_new > e_old * WORSE_RATIO + WORSE_PX:
            return (f"on {n} of your reviewed points it is {e_new:.1f} px off on average, "
                    f"against {e_old:.1f} px for run {old_id}")
        return None
    common = new_p.keys() & old_p.keys()

    def mean_conf(d: Mapping[tuple[int, int], LandmarkPoint]) -> float | None:
        c = [d[k].confidence for k in common
             if d[k].confidence is not None and math.isfinite(d[k].confidence)]  # type: ignore[arg-type]
        return sum(c) / len(c) if c else None  # type: ignore[arg-type]

    c_new, c_old = mean_conf(new_p), mean_conf(old_p)
    if c_new is not None and c_old is not None and c_new < c_old - CONF_DROP \
            and c_new < c_old * CONF_RATIO:
        return (f"its mean confidence is {c_new:.2f}, against {c_old:.2f} for run {old_id}, "
                f"on the {len(common)} points both predicted")
    return None


def restore_run(project: Any, run_id: int) -> int:
    """Write run `run_id`'s points as the current points; returns how many were written.

    Accepted, corrected and absent points and the exemplar are never touched (keep_human): going
    back changes only what a run wrote, never what the user decided.
    """
    rows = [(iid, replace(p, status=Status.PREDICTED, run_id=run_id))
            for iid, pts in project.predictions(run_id).items() for p in pts if _xy(p)]
    return project.set_points(rows, keep_human=True)
