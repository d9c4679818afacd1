"""Every trusted image is an exemplar (issue 19): the fusion rule, the fused preview on phantoms
(beats the exemplar alone, never overwrites a trusted point), the retrain chain's plan (only what
the corrections changed, the preview only on untrusted images) and the correction orders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lmk_studio.core.phantoms import make_phantom_set, phantom_template
from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.engine import fusion


# ---- the fusion rule ---------------------------------------------------------------------------
def test_one_source_is_returned_unchanged() -> None:
    p = np.array([[[10.0, 20.0], [np.nan, np.nan]]])
    out, conf, spread = fusion.fuse(p, np.array([[0.3, 0.1]]), np.array([[0.7, 0.0]]), 100.0)
    assert np.array_equal(out[0], [10.0, 20.0]) and np.isnan(out[1]).all()
    assert conf[0] == pytest.approx(0.7) and spread[0] == 0.0


def test_an_outlier_is_outvoted_and_agreeing_sources_average() -> None:
    p = np.array([[[10.0, 10.0]], [[12.0, 10.0]], [[80.0, 80.0]]])
    sc = np.full((3, 1), 0.5)
    out, conf, spread = fusion.fuse(p, sc, np.ones((3, 1)), 1000.0,
                                    fusion.FusionParams(inlier=0.01))
    assert out[0] == pytest.approx([11.0, 10.0])     # the far estimate dropped, the two averaged
    assert spread[0] > 0 and conf[0] < 1.0            # disagreement lowers the confidence
    # a much better patch score pulls the answer to its source
    sc2 = np.array([[0.9], [0.1], [0.1]])
    out2, _, _ = fusion.fuse(p[:2], sc2[:2], np.ones((2, 1)), 1000.0,
                             fusion.FusionParams(inlier=0.01))
    assert out2[0, 0] < 10.1


def test_greedy_coverage_prefers_an_uncovered_cluster() -> None:
    # images 0-2 alike (0 is the exemplar), 3-6 a second look-alike group, 7 an odd one out
    g = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    sim = np.where(g[:, None] == g[None], 0.9, 0.1)
    np.fill_diagonal(sim, 1.0)
    order = fusion.greedy_coverage(sim, [0], list(range(1, 8)))
    assert order[0][0] in (3, 4, 5, 6)               # representative of the uncovered group
    assert [c for c, _ in order[:2]].count(7) == 1    # then the odd one, before more of group 0
    assert order[0][1] > order[-1][1]


# ---- a phantom project -------------------------------------------------------------------------
def _project(tmp_path, n: int = 8, seed: int = 5):
    from lmk_studio.core.store import Project

    phs = make_phantom_set(n, size=(192, 160), seed=seed, difficulty="hard")
    imgs = tmp_path / "images"
    imgs.mkdir()
    for k, ph in enumerate(phs):
        cv2.imwrite(str(imgs / f"ph_{k:03d}.png"),
                    np.clip(ph.image * 255.0, 0, 255).astype(np.uint8))
    lmk = tmp_path / "p.lmk"
    with Project.create(lmk, phantom_template(), images_dir=imgs) as p:
        recs = {r.name: r.id for r in p.images()}
        p.set_points([(recs["ph_000.png"], LandmarkPoint(j, float(x), float(y), Status.EXEMPLAR,
                                                         Source.MANUAL))
                      for j, (x, y) in enumerate(phs[0].points)])
    return lmk, phs, recs


def _correct(lmk, phs, recs, ks) -> None:
    from lmk_studio.core.store import Project

    with Project.open(lmk) as p:
        for k in ks:
            p.set_points([(recs[f"ph_{k:03d}.png"], LandmarkPoint(
                j, float(x), float(y), Status.CORRECTED, Source.MANUAL))
                for j, (x, y) in enumerate(phs[k].points)])


def _errors(lmk, phs, recs, skip) -> float:
    from lmk_studio.core.store import Project

    err = []
    with Project.open(lmk) as p:
        for k, ph in enumerate(phs):
            if k in skip:
                continue
            pts = np.array([[q.x, q.y] for q in p.points(recs[f"ph_{k:03d}.png"])])
            err.append(np.linalg.norm(pts - ph.points, axis=1))
    return float(np.mean(err))


def test_two_trusted_images_beat_the_exemplar_alone_and_stay_untouched(tmp_path) -> None:
    from lmk_studio.core.store import Project
    from lmk_studio.engine.classical import run_classical_job

    lmk, phs, recs = _project(tmp_path)
    _correct(lmk, phs, recs, [1, 2])
    with Project.open(lmk) as p:
        before = {k: p.points(recs[f"ph_{k:03d}.png"]) for k in (0, 1, 2)}
        assert sorted(fusion.trusted_sources(p)) == sorted(recs[f"ph_{k:03d}.png"]
                                                          for k in (0, 1, 2))
    single = run_classical_job(lmk, fusion=None)
    e_single = _errors(lmk, phs, recs, {0, 1, 2})
    fused = run_classical_job(lmk)
    e_fused = _errors(lmk, phs, recs, {0, 1, 2})
    assert e_fused < e_single, (e_fused, e_single)
    with Project.open(lmk) as p:
        for k, pts in before.items():       # exemplar and corrected points never overwritten
            assert p.points(recs[f"ph_{k:03d}.png"]) == pts
        run = p.run(fused)
        assert run.config["sources"][0] == p.exemplar_id and len(run.config["sources"]) == 3
        assert run.metrics["fusion"]["sources_per_target"] == 3
        # trusted images are sources, not targets
        done = set(p.predictions(fused))
        assert done == {recs[f"ph_{k:03d}.png"] for k in range(3, len(phs))}
        assert set(p.predictions(single)) == done


def test_a_single_exemplar_preview_is_unchanged_by_fusion(tmp_path) -> None:
    from lmk_studio.core.store import Project
    from lmk_studio.engine.classical import run_classical_job

    lmk, phs, recs = _project(tmp_path, n=5)
    a = run_classical_job(lmk, fusion=None)
    b = run_classical_job(lmk)
    with Project.open(lmk) as p:
        pa, pb = p.predictions(a), p.predictions(b)
        assert pa.keys() == pb.keys()
        for iid in pa:
            assert [(q.x, q.y, q.confidence) for q in pa[iid]] == \
                   [(q.x, q.y, q.confidence) for q in pb[iid]]


def test_many_trusted_images_use_the_k_most_similar(tmp_path) -> None:
    from lmk_studio.core.store import Project
    from lmk_studio.engine.classical import run_classical_job

    lmk, phs, recs = _project(tmp_path, n=8)
    _correct(lmk, phs, recs, [1, 2, 3, 4])
    rid = run_classical_job(lmk, fusion=fusion.FusionParams(k=3))
    with Project.open(lmk) as p:
        m = p.run(rid).metrics["fusion"]
        assert m["trusted_images"] == 5 and m["sources_per_target"] == 3


def test_the_chain_reruns_only_what_the_corrections_changed(tmp_path) -> None:
    from lmk_studio.core.store import Project
    from lmk_studio.engine.jobs import _plan, plan_job, run_job

    lmk, phs, recs = _project(tmp_path, n=6)
    with Project.open(lmk) as p:
        assert _plan(p, "all", False) == ["classical", "stage1", "stage2"]
    run_job(lmk, "classical")
    with Project.open(lmk) as p:
        assert _plan(p, "all", False) == ["stage1", "stage2"]   # nothing corrected yet
    _correct(lmk, phs, recs, [1])
    plan = plan_job(lmk, "all", "quick")
    assert plan["steps"] == ["classical", "stage1", "stage2"]
    assert plan["trusted"] == 2 and plan["targets"] == 4 and plan["total_s"] > 0
    assert "4 untrusted images" in plan["words"]
    [rid] = run_job(lmk, "classical")
    with Project.open(lmk) as p:
        assert set(p.predictions(rid)) == {recs[f"ph_{k:03d}.png"] for k in range(2, 6)}
        assert _plan(p, "all", False) == ["stage1", "stage2"]   # the preview is up to date
        # a further correction makes the preview stale again
    _correct(lmk, phs, recs, [2])
    with Project.open(lmk) as p:
        assert _plan(p, "all", False)[0] == "classical"


def test_correction_orders(tmp_path) -> None:
    from lmk_studio.core.store import Project
    from lmk_studio.engine.classical import run_classical_job

    lmk, phs, recs = _project(tmp_path, n=6)
    run_classical_job(lmk)
    _correct(lmk, phs, recs, [1])
    with Project.open(lmk) as p:
        for by in fusion.CORRECTION_ORDERS:
            o = fusion.correction_order(p, by=by)
            ids = [r["image_id"] for r in o["order"]]
            assert sorted(ids) == sorted(recs[f"ph_{k:03d}.png"] for k in range(2, 6))
            assert o["trusted"] == sorted([p.exemplar_id, recs["ph_001.png"]])
        conf = [r["value"] for r in fusion.correction_order(p, by="confidence")["order"]]
        assert conf == sorted(conf)


def test_suggest_corrections_cli(tmp_path, capsys) -> None:
    from lmk_studio.cli import main

    lmk, _phs, _recs = _project(tmp_path, n=5)
    out = tmp_path / "o.json"
    assert main(["suggest-corrections", str(lmk), "--by", "help", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "by help" in text and out.is_file()
    assert main(["suggest-corrections", str(tmp_path / "nope.lmk")]) == 2
