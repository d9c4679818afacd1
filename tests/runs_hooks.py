"""Job targets for tests/test_gui_runs.py, run in the app's job process instead of a training:
each writes a finished run the way the engine jobs do (history, then current points that no
human decided). Qt-free: the spawned child imports this module."""

from __future__ import annotations

from lmk_studio.core.points import LandmarkPoint, Source, Status


def write_run(project, kind: str, dx: float, conf: float) -> int:
    """A finished `kind` run: every non-exemplar image's points = the exemplar's + (dx, 0)."""
    from lmk_studio.core.store import Project

    proj = project if not isinstance(project, str) else Project.open(project)
    try:
        ex = proj.exemplar_id
        base = proj.points(ex)
        rid = proj.start_run(kind, {"preset": "quick"})
        src = Source.STAGE1 if kind.startswith("stage1") else Source.CLASSICAL
        rows = [(r.id, LandmarkPoint(p.index, p.x + dx, p.y, Status.PREDICTED, src, conf, None,
                                     rid))
                for r in proj.images() if r.id != ex for p in base if p.placed]
        proj.record_predictions(rid, rows)
        proj.set_points(rows, keep_human=True)
        proj.finish_run(rid, "finished")
        return rid
    finally:
        if isinstance(project, str):
            proj.close()


def worse_stage1(project, job, **_kw) -> list[int]:
    """What the issue saw: a quick Stage I whose points are 'predicted 0.00' and far off."""
    return [write_run(project, "stage1", 12.0, 0.0)]
