"""Stage II on a project store: results as Source.STAGE2 with confidence; human points untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmk_studio.core.points import Source, Status


def test_stage2_job_writes_predictions_and_never_overwrites_trusted_points(tmp_path) -> None:
    store = pytest.importorskip("lmk_studio.core.store")
    phantoms = pytest.importorskip("lmk_studio.core.phantoms")
    from lmk_studio.engine.stage2 import predict_stage2_job, train_stage2_job

    lmk = phantoms.write_demo_project(tmp_path / "demo", n=5, size=(160, 128), seed=0)
    cfg = {"detector": {"kind": "unet", "base": 8, "depth": 2}, "patch": 32, "scale": 1.0,
           "sigma": 1.5, "steps": 6, "steps_per_epoch": 3, "batch_trusted": 4,
           "batch_pseudo": 4, "calib_warps": 1, "tolerance_px": 6.0}
    preset_path = tmp_path / "tiny.json"
    preset_path.write_text(json.dumps(cfg))

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
