"""engine.candidates: per-landmark choice among propagation candidates, label-free, on phantoms.

The phantom "ear rod" is a faint ring drawn at the same pixel position in every image, after the
anatomy was deformed: a landmark on it must follow the device, not the skull."""

from __future__ import annotations

import numpy as np
import pytest

from lmk_studio.core.phantoms import make_phantom_set
from lmk_studio.engine import trust
from lmk_studio.engine.candidates import (
    AFFINE,
    PREVIEW,
    UNREGISTERED,
    CandidateSet,
    apply_choice,
    choice_confidence,
    choice_expected_error,
    choose_per_landmark,
    image_candidates,
    local_search,
    stretch_matrix,
)

SIZE = (192, 160)
ROD = np.array([0.55 * SIZE[1], 0.22 * SIZE[0]])       # (x, y), fixed to the "device"


def _with_rod(img: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    r = np.hypot(xx - ROD[0], yy - ROD[1])
    return np.clip(img + 0.25 * np.exp(-((r - 4.0) / 1.2) ** 2), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def rod_set() -> tuple[list[np.ndarray], np.ndarray, list, np.ndarray]:
    phs = make_phantom_set(7, size=SIZE, seed=0)
    imgs = [_with_rod(p.image) for p in phs]
    truth = np.stack([np.vstack([p.points, ROD]) for p in phs])
    res = [image_candidates(imgs[0], truth[0], im) for im in imgs[1:]]
    return imgs, truth, res, np.stack([r[1] for r in res])


def test_fixed_structure_follows_the_device_and_anatomy_keeps_the_registration(rod_set) -> None:
    """Measured (seed 0, 6 targets): the rod landmark's gain of the unregistered copy over the
    preview 0.22 (margin 0.05), its error 0.0 px vs preview 1.65 px; anatomy stays on the
    preview (0.28-1.5 px per landmark, identical to the preview)."""
    _, truth, res, scores = rod_set
    names = res[0][0].names
    ch = choose_per_landmark(scores, names)
    chosen = ch.chosen_names()
    rod = len(chosen) - 1
    assert chosen[rod].startswith(UNREGISTERED), chosen
    assert all(c.startswith(PREVIEW) for c in chosen[:rod]), chosen
    final = np.stack([apply_choice(r[0], ch) for r in res])
    err = np.linalg.norm(final - truth[1:], axis=-1)
    prev = np.stack([r[0].points[r[0].index(PREVIEW)] for r in res])
    err_prev = np.linalg.norm(prev - truth[1:], axis=-1)
    assert err[:, rod].mean() < 0.5 < err_prev[:, rod].mean()
    assert err[:, :rod].mean() <= err_prev[:, :rod].mean() + 0.2, (err.mean(0), err_prev.mean(0))
    ident = np.linalg.norm(truth[:1] - truth[1:], axis=-1)
    assert np.all(err.mean(0) <= ident.mean(0) + 0.5)      # never worse than no registration


def test_choice_confidence_takes_the_winners_score_off_the_primary(rod_set) -> None:
    _, _, res, scores = rod_set
    cs, sc, conf = res[0]
    ch = choose_per_landmark(scores, cs.names)
    c = choice_confidence(cs, ch, sc, conf)
    assert c.shape == conf.shape and np.all((c >= 0) & (c <= 1))
    # engine.trust's map of the expected error, which can be read back from the confidence
    e = choice_expected_error(cs, ch, sc)
    assert np.all(np.isfinite(e)) and np.all(e >= 1.0)
    assert np.allclose(c, trust.confidence_from_expected(e))
    assert np.allclose(trust.expected_from_confidence(c), e)
    # without a feature (a missing point) the engine's own confidence is kept
    cs2 = CandidateSet(list(cs.names), cs.points.copy(), cs.linear.copy())  # fixture kept
    cs2.points[:, 0] = np.nan
    c2 = choice_confidence(cs2, ch, sc, conf)
    assert c2[0] == conf[0]


def test_choose_per_landmark_margin_primary_and_missing_points() -> None:
    names = [UNREGISTERED, AFFINE, PREVIEW]
    sc = np.zeros((4, 3, 3))
    sc[:, 0, 0] = 0.3             # landmark 0: the copy wins clearly in every image
    sc[:, 1, 1] = 0.03            # landmark 1: the affine wins by less than the margin
    sc[:, 0, 2] = np.nan          # landmark 2: a candidate missing everywhere never wins
    sc[:, 2, 2] = -0.5
    ch = choose_per_landmark(sc, names, PREVIEW, margin=0.05)
    assert ch.chosen_names() == [UNREGISTERED, PREVIEW, AFFINE]
    assert ch.gains[0, 2] == -np.inf and ch.gains[1, 2] == pytest.approx(0.5)
    assert choose_per_landmark(sc[0], names, PREVIEW, 0.0).chosen_names()[1] == AFFINE
    # missing chosen point -> the primary's
    pts = np.stack([np.full((3, 2), np.nan), np.ones((3, 2)), 2 * np.ones((3, 2))])
    out = apply_choice(CandidateSet(names, pts, np.zeros((3, 3, 2, 2))), ch)
    assert out[0].tolist() == [2.0, 2.0] and out[2].tolist() == [1.0, 1.0]


def test_local_search_recovers_a_shift_and_stretch_matrix_maps_corners() -> None:
    ph = make_phantom_set(1, size=SIZE, seed=3)[0]
    img = np.roll(ph.image, (2, -3), axis=(0, 1))          # content moves by (dx, dy) = (-3, 2)
    pts, best = local_search(ph.image, ph.points, img, ph.points,
                             np.broadcast_to(np.eye(2), (len(ph.points), 2, 2)), 0.04, 0.03)
    moved = np.linalg.norm(pts - (ph.points + [-3, 2]), axis=1)
    assert np.median(moved) < 0.5 and np.all(best > 0.5), (moved, best)
    s = stretch_matrix((100, 50), (200, 150))
    corners = np.array([[-0.5, -0.5], [49.5, 99.5]])
    assert np.allclose(corners @ s[:2, :2].T + s[:2, 2], [[-0.5, -0.5], [149.5, 199.5]])


def test_candidate_set_add_borrows_the_registered_map() -> None:
    lin = np.stack([np.broadcast_to(np.eye(2), (2, 2, 2)), np.broadcast_to(2 * np.eye(2),
                                                                          (2, 2, 2))])
    cs = CandidateSet([UNREGISTERED, AFFINE], np.zeros((2, 2, 2)), lin)
    cs.add("stage1", np.ones((2, 2)))
    assert cs.names[-1] == "stage1" and cs.points.shape == (3, 2, 2)
    assert np.array_equal(cs.linear[2], lin[1])


def test_classical_job_records_the_winner_per_landmark(tmp_path) -> None:
    store = pytest.importorskip("lmk_studio.core.store")
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.engine.classical import run_classical_job

    lmk = write_demo_project(tmp_path / "d", n=4, size=(96, 80), seed=0)
    run_id = run_classical_job(lmk)
    plain = run_classical_job(lmk, candidates=None)
    with store.Project.open(lmk) as p:
        m = p.run(run_id).metrics["candidates"]
        assert len(m["chosen_per_landmark"]) == len(m["landmarks"]) == 12
        assert set(m["chosen_per_landmark"]) <= set(m["names"])
        assert p.run(run_id).config["candidates"]["margin"] > 0
        assert p.run(plain).metrics["candidates"] is None


def test_stage1_final_choice_moves_only_the_device_landmark(rod_set) -> None:
    """Stage I's points (here: the preview's, as a stand-in) are the primary; the rod landmark
    leaves them, the anatomy keeps them; the config section round-trips."""
    pytest.importorskip("torch")
    from lmk_studio.engine.stage1.config import Stage1Config, load_preset
    from lmk_studio.engine.stage1.pipeline import choose_candidates

    imgs, truth, res, _ = rod_set
    pts = np.stack([truth[0]] + [r[0].points[r[0].index(PREVIEW)] for r in res])
    conf = np.ones(pts.shape[:2])
    out, c, rec = choose_candidates(imgs, 0, truth[0], pts, conf, {"margin": 0.05})
    rod = pts.shape[1] - 1
    assert rec["chosen_per_landmark"][rod].startswith(UNREGISTERED)
    assert all(n.startswith("stage1") for n in rec["chosen_per_landmark"][:rod])
    assert np.linalg.norm(out[1:, rod] - truth[1:, rod], axis=-1).mean() < 0.5
    assert np.array_equal(out[0], pts[0]) and np.all((c >= 0) & (c <= 1))
    d = load_preset("cpu").to_dict()
    d["candidates"] = {"margin": 0.05}
    assert Stage1Config.from_dict(d).candidates == {"margin": 0.05}


def test_a_few_new_images_keep_the_folder_choice(tmp_path) -> None:
    """One new patient is too few to decide which landmarks follow the device: the run reuses
    the choice an earlier run made over a whole folder (here: landmark 0 on the copied point)."""
    store = pytest.importorskip("lmk_studio.core.store")
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.engine.classical import MIN_IMAGES_FOR_CHOICE, run_classical_job

    lmk = write_demo_project(tmp_path / "d", n=4, size=(96, 80), seed=0)
    first = run_classical_job(lmk)
    with store.Project.open(lmk) as p:
        m = dict(p.run(first).metrics["candidates"])
        folder_choice = [UNREGISTERED] + [PREVIEW] * (len(m["landmarks"]) - 1)
        m["chosen_per_landmark"] = folder_choice
        fake = p.start_run("classical", {"images": 40})
        p.finish_run(fake, "finished", metrics={"images": MIN_IMAGES_FOR_CHOICE + 30,
                                                "candidates": m})
        target = [r.id for r in p.images() if r.id != p.exemplar_id][0]
        ex0 = next(q for q in p.points(p.exemplar_id) if q.index == 0)
    new = run_classical_job(lmk, images=[target])
    with store.Project.open(lmk) as p:
        assert p.run(new).metrics["candidates"]["chosen_per_landmark"] == folder_choice
        q0 = next(q for q in p.points(target) if q.index == 0)
        assert abs(q0.x - ex0.x) < 1e-6 and abs(q0.y - ex0.y) < 1e-6  # the copied point


def test_one_tiny_image_is_skipped_by_name_and_the_rest_predicted(tmp_path) -> None:
    """Each image's failure is its own: an 8 x 8 image in the folder used to stop the preview
    for every later image."""
    import cv2

    store = pytest.importorskip("lmk_studio.core.store")
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.engine.classical import run_classical_job

    lmk = write_demo_project(tmp_path / "d", n=4, size=(96, 80), seed=0)
    tiny = tmp_path / "d" / "images" / "aaa_tiny.png"
    cv2.imwrite(str(tiny), np.full((8, 8), 100, np.uint8))
    with store.Project.open(lmk) as p:
        p.add_images([tiny])
    rid = run_classical_job(lmk)
    with store.Project.open(lmk) as p:
        run = p.run(rid)
        assert run.status == "finished"
        assert any("aaa_tiny.png" in f for f in run.metrics["faults"]), run.metrics["faults"]
        assert run.metrics["points_written"] == 3 * 12
