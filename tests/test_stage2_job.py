"""Stage II on a project store: results as Source.STAGE2 with confidence; human points untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmk_studio.core.points import Source, Status


def _demo_and_tiny_preset(tmp_path, steps: int):
    """A 5-image phantom demo project and a Stage II preset small enough for a test."""
    phantoms = pytest.importorskip("lmk_studio.core.phantoms")
    lmk = phantoms.write_demo_project(tmp_path / "demo", n=5, size=(160, 128), seed=0)
    cfg = {"detector": {"kind": "unet", "base": 8, "depth": 2}, "patch": 32, "scale": 1.0,
           "sigma": 1.5, "steps": steps, "steps_per_epoch": steps // 2, "batch_trusted": 4,
           "batch_pseudo": 4, "calib_warps": 1, "tolerance_px": 6.0}
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(cfg))
    return lmk, preset


def test_stage2_job_writes_predictions_and_never_overwrites_trusted_points(tmp_path) -> None:
    store = pytest.importorskip("lmk_studio.core.store")
    from lmk_studio.engine.stage2 import predict_stage2_job, train_stage2_job

    lmk, preset_path = _demo_and_tiny_preset(tmp_path, steps=6)

    with store.Project.open(lmk) as p:
        ex = p.exemplar_id
        assert ex is not None
        others = [r.id for r in p.images() if r.id != ex]
        ex_pts = p.points(ex)
        rng = np.random.default_rng(0)
        rows = []
        for iid in others:
            for q in ex_pts:
                if q.placed:
                    rows.append((iid, type(q)(q.index, q.x + rng.normal(0, 2),
                                              q.y + rng.normal(0, 2), Status.PREDICTED,
                                              Source.CLASSICAL)))
        p.set_points(rows)
        fixed = others[0]
        p.set_point(fixed, 0, 11.0, 12.0, status=Status.CORRECTED, source=Source.MANUAL)

    run_id = train_stage2_job(lmk, preset=str(preset_path), device="cpu", resume=False, seed=0)
    with store.Project.open(lmk) as p:
        run = p.run(run_id)
        assert run.status == "finished"
        assert p.points(ex) == ex_pts
        kept = p.points(fixed)[0]
        assert (kept.x, kept.y, kept.status) == (11.0, 12.0, Status.CORRECTED)
        new = [q for q in p.points(others[1]) if q.placed]
        assert new and all(q.source is Source.STAGE2 and q.run_id == run_id for q in new)
        assert all(0.0 <= q.confidence <= 1.0 and q.expected_error_px > 0 for q in new)
        assert p.predictions(run_id)

    run2 = predict_stage2_job(lmk, device="cpu", images=[others[1]])
    with store.Project.open(lmk) as p:
        assert p.run(run2).status == "finished"
        assert all(q.run_id == run2 for q in p.points(others[1]) if q.placed)


def test_retraining_sets_the_expected_error_scale_from_the_reviewers_corrections(tmp_path) -> None:
    """The reviewer moves every point of two images 9 px from the first run's answer; the next
    run's expected-error scale shifts by exactly the median log ratio of those moves."""
    store = pytest.importorskip("lmk_studio.core.store")
    from lmk_studio.engine.stage2 import train_stage2_job
    from lmk_studio.engine.stage2.confidence import MIN_REVIEWED

    lmk, preset = _demo_and_tiny_preset(tmp_path, steps=4)
    with store.Project.open(lmk) as p:
        ex = p.exemplar_id
        others = [r.id for r in p.images() if r.id != ex]
        rows = [(iid, type(q)(q.index, q.x + 1.0, q.y - 1.0, Status.PREDICTED, Source.CLASSICAL))
                for iid in others for q in p.points(ex) if q.placed]
        p.set_points(rows)
    first = train_stage2_job(lmk, preset=str(preset), device="cpu", seed=0)
    with store.Project.open(lmk) as p:
        assert "review_shift" not in p.run(first).metrics["calibration"]
        preds = p.predictions(first)
        exp, act = [], []
        for iid in others[:2]:
            for q in preds[iid]:
                p.set_point(iid, q.index, q.x + 9.0, q.y, status=Status.CORRECTED,
                            source=Source.MANUAL)
                exp.append(q.expected_error_px)
                act.append(9.0)
    assert len(exp) >= MIN_REVIEWED
    second = train_stage2_job(lmk, preset=str(preset), device="cpu", seed=0)
    with store.Project.open(lmk) as p:
        cal = p.run(second).metrics["calibration"]
    assert cal["reviewed_n"] == len(exp)
    want = float(np.median(np.log1p(act) - np.log1p(np.array(exp))))
    assert cal["review_shift"] == pytest.approx(want, abs=1e-9)
    assert cal["reviewed_mean_actual_px"] == pytest.approx(9.0)


class _FakeRun:
    def __init__(self, id, kind, config):
        self.id, self.kind, self.config = id, kind, config
        self.status, self.metrics, self.checkpoints, self.timings = "running", {}, {}, {}


class _FakeProject:
    """The subset of the core.store.Project contract the Stage II jobs use, in memory."""

    def __init__(self, path, n_lm, image_paths):
        from types import SimpleNamespace

        self.path = path
        self.template = [None] * n_lm
        self._images = [SimpleNamespace(id=i + 1, path=p, name=f"img{i}", spacing=None)
                        for i, p in enumerate(image_paths)]
        from lmk_studio.core.points import LandmarkPoint

        self._pts = {r.id: [LandmarkPoint(j, None, None) for j in range(n_lm)]
                     for r in self._images}
        self._runs, self._preds = [], {}

    def images(self):
        return list(self._images)

    def points(self, iid):
        return list(self._pts[iid])

    def all_points(self):
        return {k: list(v) for k, v in self._pts.items()}

    def set_points(self, rows, keep_human=False):
        n = 0
        for iid, p in rows:
            cur = self._pts[iid][p.index]
            if keep_human and (cur.status.is_trusted or cur.status is Status.ABSENT):
                continue
            self._pts[iid][p.index] = p
            n += 1
        return n

    def runs(self):
        return list(self._runs)

    def start_run(self, kind, config):
        self._runs.append(_FakeRun(len(self._runs) + 1, kind, config))
        return len(self._runs)

    def run(self, rid):
        return self._runs[rid - 1]

    def finish_run(self, rid, status, metrics=None, checkpoints=None, timings=None):
        r = self._runs[rid - 1]
        r.status, r.metrics = status, metrics or {}
        r.checkpoints, r.timings = checkpoints or {}, timings or {}

    def record_predictions(self, rid, rows):
        d = self._preds.setdefault(rid, {})
        for iid, p in rows:
            d.setdefault(iid, []).append(p)

    def predictions(self, rid, image_ids=None):
        got = self._preds.get(rid, {})
        return got if image_ids is None else {i: v for i, v in got.items() if i in set(image_ids)}


def test_stage2_job_logic_on_an_in_memory_project(tmp_path, monkeypatch) -> None:
    """Start points from the newest classical run; exemplar/corrected/absent never overwritten."""
    from test_stage2_training import _phantoms

    from lmk_studio.core.points import LandmarkPoint
    from lmk_studio.engine.stage2 import job

    imgs, truth = _phantoms(5, seed=0)
    n = truth.shape[1]
    paths = [tmp_path / f"im{i}.png" for i in range(len(imgs))]
    by_path = {str(p): im for p, im in zip(paths, imgs, strict=True)}
    monkeypatch.setattr(job, "_load_levels",
                        lambda path, cfg: (by_path[str(path)], (1.0, 1.0), None, None))
    proj = _FakeProject(tmp_path / "p.lmk", n, paths)
    proj.set_points([(1, LandmarkPoint(j, *truth[0, j], Status.EXEMPLAR, Source.MANUAL))
                     for j in range(n)])
    rid0 = proj.start_run("classical", {})
    rng = np.random.default_rng(0)
    proj.record_predictions(rid0, [
        (i + 1, LandmarkPoint(j, *(truth[i, j] + rng.normal(0, 2, 2)), Status.PREDICTED,
                              Source.CLASSICAL)) for i in range(1, 5) for j in range(n)])
    proj.finish_run(rid0, "finished")
    proj.set_points([(2, LandmarkPoint(0, 7.0, 8.0, Status.CORRECTED, Source.MANUAL)),
                     (3, LandmarkPoint(1, None, None, Status.ABSENT))])
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"detector": {"kind": "unet", "base": 8, "depth": 2},
                                  "patch": 32, "scale": 1.0, "sigma": 1.5, "steps": 4,
                                  "steps_per_epoch": 2, "batch_trusted": 4, "batch_pseudo": 4,
                                  "calib_warps": 1, "tolerance_px": 6.0}))
    rid = job.train_stage2_job(proj, preset=str(preset), device="cpu", seed=0)
    run = proj.run(rid)
    assert run.status == "finished", run.metrics
    assert "classical" in run.config["start_points"]
    assert all(p.status is Status.EXEMPLAR for p in proj.points(1))
    assert proj.points(2)[0].status is Status.CORRECTED and proj.points(2)[0].x == 7.0
    assert proj.points(3)[1].status is Status.ABSENT
    new = [p for p in proj.points(4) if p.placed]
    assert len(new) == n and all(p.source is Source.STAGE2 and p.run_id == rid for p in new)
    assert all(0 <= p.confidence <= 1 and p.expected_error_px > 0 for p in new)
    assert len(proj.predictions(rid)[4]) == n
    rid2 = job.predict_stage2_job(proj, device="cpu", images=[5])
    assert proj.run(rid2).status == "finished"
    assert all(p.run_id == rid2 for p in proj.points(5))
    assert all(p.run_id == rid for p in proj.points(4))
