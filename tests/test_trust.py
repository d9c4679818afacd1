"""engine.trust: each signal's behaviour on phantoms with known failures, and the triage."""

from __future__ import annotations

import numpy as np
import pytest

from lmk_studio.core.phantoms import make_phantom_set
from lmk_studio.engine import trust
from lmk_studio.engine.candidates import (
    choose_per_landmark,
    folder_expected_error,
    image_candidates,
)

SIZE = (192, 160)


def test_shape_residual_sees_the_point_off_the_shape_and_ignores_an_affine() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(20, 140, size=(12, 2))
    a = np.array([[1.1, 0.2], [-0.15, 0.9]])
    pts = ref @ a.T + [7.0, -3.0]
    r = trust.shape_residual(pts, ref[None])
    assert np.all(r < 1e-6)                      # an affine of the reference fits exactly
    moved = pts.copy()
    moved[4] += [9.0, 0.0]
    r = trust.shape_residual(moved, ref[None])
    assert r[4] > 8.0 and np.median(np.delete(r, 4)) < 2.0
    moved[7] = np.nan
    assert np.isnan(trust.shape_residual(moved, ref[None])[7])


def test_expected_error_uses_the_folder_median_and_confidence_reads_back() -> None:
    v = np.zeros((10, 3, 3))
    v[:, 1] = 1.0                               # landmark 1 is worse on every image
    e_img = trust.expected_error(v)
    e_fold = trust.expected_error(v, trust.folder_medians(v))
    assert np.all(e_img[:, 1] > e_img[:, 0]) and np.all(e_fold[:, 1] > e_fold[:, 0])
    c = trust.confidence_from_expected(e_fold, 16.0)
    assert np.allclose(trust.expected_from_confidence(c, 16.0), e_fold)
    assert trust.confidence_from_expected(16.0, 16.0) == pytest.approx(0.5)
    v[3, 2, 0] = np.nan
    assert np.isnan(trust.expected_error(v)[3, 2])
    # too few images: no folder median
    assert np.isnan(trust.folder_medians(v[:3])).all()


def test_conformal_scale_per_landmark_and_pooled() -> None:
    exp = np.ones((20, 2))
    act = np.stack([np.full(20, 3.0), np.full(20, 0.5)], axis=1)
    lm = np.broadcast_to(np.arange(2), (20, 2))
    s = trust.conformal_scale(exp, act, lm, 3)
    assert s[0] == pytest.approx(3.0) and s[1] == pytest.approx(0.5)
    assert 0.5 <= s[2] <= 3.0                    # no reviews of landmark 2: the pooled ratio
    assert np.all(trust.conformal_scale([], [], [], 2) == 1.0)


def test_triage_ranks_within_the_folder_not_every_image_red() -> None:
    vals = [50.0, 48.0, 52.0, 49.0, 51.0, 47.0, 90.0, 46.0, 50.5, 49.5]
    lv = trust.triage_levels(vals)
    assert lv[6] == "worst" and lv.count("worst") == 1 and lv.count("doubtful") == 3
    assert lv.count("fine") == 6
    assert trust.triage_levels([float("nan"), 1.0])[0] == "fine"
    assert trust.image_expected_error([1.0, 2.0, 30.0, 10.0, np.nan]) == pytest.approx(14.0)


def _flattest_shift(img: np.ndarray, p: np.ndarray, d: float) -> np.ndarray:
    """The point d px from p whose 7x7 neighbourhood has the least variance: off the
    structure the landmark sits on."""
    best, out = np.inf, p
    for ang in np.linspace(0, 2 * np.pi, 16, endpoint=False):
        q = p + d * np.array([np.cos(ang), np.sin(ang)])
        x, y = int(round(q[0])), int(round(q[1]))
        if not (4 <= x < img.shape[1] - 4 and 4 <= y < img.shape[0] - 4):
            continue
        s = float(img[y - 3:y + 4, x - 3:x + 4].std())
        if s < best:
            best, out = s, q
    return out


def _folder(imgs: list[np.ndarray], ex_pts: np.ndarray) -> np.ndarray:
    res = [image_candidates(imgs[0], ex_pts, im) for im in imgs[1:]]
    sets, scores = [r[0] for r in res], [r[1] for r in res]
    ch = choose_per_landmark(np.stack(scores), sets[0].names)
    return folder_expected_error(sets, ch, scores)


def test_a_landmark_moved_the_same_way_in_every_image_loses_confidence() -> None:
    """The exemplar's point of one landmark is put 6 px off its structure (towards the flattest
    neighbourhood), so every propagated point is off the same way and every engine signal
    agrees with itself; its expected error must rise against the other landmarks'.

    Measured (seed 1, 8 targets, each of the 12 landmarks moved in turn): the ratio (moved
    landmark's median expected error / the others') grows x1.37, 1.88, 1.12, 0.98, 1.0, 0.98,
    0.94, 1.0, 1.71, 1.02, 0.98, 1.01: the searched twin walks off and the patch match weakens
    where the shifted patch loses its structure (landmarks 0, 1, 2, 8); where the phantom's
    smooth texture still matches at the shifted point nothing label-free tells it apart (the
    limit stated in training/reports/trust.md)."""
    phs = make_phantom_set(trust.MIN_FOLDER + 1, size=SIZE, seed=1)
    imgs = [p.image.astype(np.float32) for p in phs]
    ex = phs[0].points.astype(np.float64)
    base = _folder(imgs, ex)

    def rel(e: np.ndarray, j: int) -> float:
        return float(np.median(e[:, j]) / np.median(np.delete(e, j, axis=1)))

    growth = []
    for j in range(len(ex)):
        moved = ex.copy()
        moved[j] = _flattest_shift(imgs[0], ex[j], 6.0)
        shifted = _folder(imgs, moved)
        growth.append(rel(shifted, j) / rel(base, j))
        if j in (1, 8):
            c0 = trust.confidence_from_expected(base[:, j]).mean()
            c1 = trust.confidence_from_expected(shifted[:, j]).mean()
            assert c1 < c0, (j, c0, c1)
    g = np.array(growth)
    assert (g > 1.3).sum() >= 3, g.round(2)
    assert g.min() > 0.85, g.round(2)          # moving a landmark never makes it look safer
    assert g.mean() > 1.1, g.round(2)
