"""engine.jobs.run_job on a tiny phantom project: the "all" pipeline writes classical, Stage I and
Stage II runs in order, skips a preview that already exists, resumes where a cancel stopped it,
and refuses bad jobs and presets before writing anything."""

from __future__ import annotations

import json

import pytest

from lmk_studio.core.errors import LmkError
from lmk_studio.engine.common import Cancelled, CancelToken
from lmk_studio.engine.jobs import JOB_STAGE, check_presets, run_job, stage_presets

TINY1 = {"name": "tiny1", "start": "learned", "torch_threads": 1,
         "coarse": {"size": [48, 48], "backbone": "small_cnn", "width": 4, "d_model": 16,
                    "heads": 2, "n_layers": 1, "global_type": "classical", "epochs": 2,
                    "steps_per_epoch": 2, "batch": 2, "lr": 1e-3, "eval_every": 1,
                    "sigma": 2.0}}
TINY2 = {"detector": {"kind": "unet", "base": 8, "depth": 2}, "patch": 32, "scale": 1.0,
         "sigma": 1.5, "steps": 6, "steps_per_epoch": 3, "batch_trusted": 4, "batch_pseudo": 4,
         "calib_warps": 1, "tolerance_px": 6.0}


@pytest.fixture
def tiny(tmp_path):
    """A 5-image phantom project and one tiny preset file per stage."""
    store = pytest.importorskip("lmk_studio.core.store")
    pytest.importorskip("lmk_studio.core.images")
    pytest.importorskip("lmk_studio.engine.classical")
    phantoms = pytest.importorskip("lmk_studio.core.phantoms")
    import torch

    torch.set_num_threads(1)
    lmk = phantoms.write_demo_project(tmp_path / "démo", n=5, size=(160, 128), seed=0)
    p1, p2 = tmp_path / "tiny1.json", tmp_path / "tiny2.json"
    p1.write_text(json.dumps(TINY1), encoding="utf-8")
    p2.write_text(json.dumps(TINY2), encoding="utf-8")
    return store, lmk, {"stage1": str(p1), "stage2": str(p2)}


def test_all_runs_classical_stage1_stage2_then_skips_the_preview(tiny) -> None:
    from lmk_studio.core.points import Source, Status

    store, lmk, presets = tiny
    with store.Project.open(lmk) as p:
        ex = p.exemplar_id
        ex_pts = p.points(ex)
    events = []
    ids = run_job(lmk, "all", preset=presets, device="cpu", seed=0, progress=events.append)
    with store.Project.open(lmk) as p:
        runs = [p.run(i) for i in ids]
        assert [r.kind for r in runs] == ["classical", "stage1", "stage2"]
        assert all(r.status == "finished" for r in runs)
        assert p.points(ex) == ex_pts
        other = next(r.id for r in p.images() if r.id != ex)
        pts = [q for q in p.points(other) if q.placed]
        assert pts and all(q.source is Source.STAGE2 and q.status is Status.PREDICTED
                           for q in pts)
    steps = [e.message for e in events if e.stage == JOB_STAGE]
    assert steps[0].startswith("step 1 of 3") and steps[-1] == "done"
    stages = {e.stage for e in events}
    assert {"stage1-load", "stage2-load", "stage2"} <= stages

    # nothing changed since (same trusted points, preset and seed): Stage I is up to date
    again = run_job(lmk, "all", preset=presets, device="cpu", seed=0)
    with store.Project.open(lmk) as p:
        assert [p.run(i).kind for i in again] == ["stage2"]
    # another seed asks for a new Stage I
    again = run_job(lmk, "all", preset=presets, device="cpu", seed=1)
    with store.Project.open(lmk) as p:
        assert [p.run(i).kind for i in again] == ["stage1", "stage2"]


def test_resume_after_a_cancelled_stage2_skips_the_finished_stage1(tiny) -> None:
    store, lmk, presets = tiny
    tok = CancelToken()

    def cancel_in_stage2(ev) -> None:
        if ev.stage == "stage2" and ev.step >= 1:
            tok.cancel()

    with pytest.raises(Cancelled):
        run_job(lmk, "all", preset=presets, device="cpu", seed=0, progress=cancel_in_stage2,
                cancel=tok)
    with store.Project.open(lmk) as p:
        by_kind = {r.kind: r.status for r in p.runs()}
        assert by_kind == {"classical": "finished", "stage1": "finished", "stage2": "cancelled"}
    ids = run_job(lmk, "all", preset=presets, device="cpu", seed=0, resume=True)
    with store.Project.open(lmk) as p:
        (run,) = [p.run(i) for i in ids]
        assert run.kind == "stage2" and run.status == "finished"
        assert run.config["resumed_from"]


def test_predict_job_on_chosen_images(tiny) -> None:
    store, lmk, presets = tiny
    run_job(lmk, "classical", device="cpu")
    run_job(lmk, "stage2", preset=presets["stage2"], device="cpu", seed=0)
    with store.Project.open(lmk) as p:
        target = [r.id for r in p.images() if r.id != p.exemplar_id][1]
    (rid,) = run_job(lmk, "predict-stage2", device="cpu", images=[target])
    with store.Project.open(lmk) as p:
        assert p.run(rid).kind == "stage2-predict" and p.run(rid).status == "finished"
        assert all(q.run_id == rid for q in p.points(target) if q.placed)


def test_bad_jobs_and_presets_are_refused_before_any_run(tiny, tmp_path) -> None:
    store, lmk, presets = tiny
    with pytest.raises(LmkError, match="unknown job 'stage3'"):
        run_job(lmk, "stage3")
    with pytest.raises(LmkError, match="describes one stage"):
        run_job(lmk, "all", preset=presets["stage1"])
    with pytest.raises(LmkError, match="Stage II preset 'turbo' not found"):
        run_job(lmk, "all", preset={"stage1": presets["stage1"], "stage2": "turbo"})
    with pytest.raises(LmkError, match="unknown keys"):
        run_job(lmk, "all", preset={"stage3": "quick"})
    with store.Project.open(lmk) as p:
        assert p.runs() == []  # the classical preview did not start for a doomed job
    with pytest.raises(LmkError, match="no such project file"):
        run_job(tmp_path / "gone ü.lmk", "classical")


def test_preset_choice_per_stage() -> None:
    assert stage_presets("all", "quick") == {"stage1": "quick", "stage2": "quick"}
    assert stage_presets("stage2", None) == {"stage2": None}
    assert stage_presets("classical", "quick") == {}
    assert check_presets("all", "quick") == {"stage1": "quick", "stage2": "quick"}
    with pytest.raises(LmkError, match="Stage I preset 'nope' not found"):
        check_presets("stage1", "nope")
