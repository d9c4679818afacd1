"""Stage I training behaviour on tiny phantoms: it learns (error well below identity), and a
cancelled run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from lmk_studio.engine.common import Cancelled, CancelToken
from lmk_studio.engine.stage1 import PassConfig, Stage1Config, fit_stage1
from lmk_studio.engine.stage1.trainer import PassData, PassTrainer

TINY = PassConfig(size=(48, 48), backbone="small_cnn", width=4, d_model=16, heads=2, n_layers=1,
                  epochs=2, steps_per_epoch=2, batch=2, lr=1e-3, eval_every=1, sigma=2.0)


def _phantoms(n: int, size: int = 64, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Bright quadrilaterals under random similarity transforms plus independent corner shifts
    (so a global step alone cannot be exact); landmarks = the corners."""
    rng = np.random.default_rng(seed)
    base = np.array([[20, 20], [44, 22], [40, 44], [24, 40]], dtype=np.float64)
    imgs, pts = [], []
    for k in range(n):
        ang = 0 if k == 0 else rng.uniform(-0.25, 0.25)
        sc = 1 if k == 0 else rng.uniform(0.85, 1.15)
        t = np.zeros(2) if k == 0 else rng.uniform(-6, 6, 2)
        c = np.array([32.0, 32.0])
        r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * sc
        p = (base - c) @ r.T + c + t
        if k:
            p = p + rng.uniform(-3, 3, p.shape)   # local (non-affine) shape change
        img = np.zeros((size, size), np.float32)
        cv2.fillPoly(img, [np.round(p).astype(np.int32)], 0.8)
        cv2.circle(img, tuple(np.round(p[0]).astype(int)), 4, 1.0, -1)
        img = cv2.GaussianBlur(img, (5, 5), 1.2) + rng.normal(0, 0.02, img.shape).astype(np.float32)
        imgs.append(np.clip(img, 0, 1))
        pts.append(p)
    return imgs, np.array(pts)


def _data(n: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    try:
        from lmk_studio.core.phantoms import make_phantom_set
    except ImportError:
        return _phantoms(n)
    ph = make_phantom_set(n, size=(64, 64), seed=0)
    return [p.image for p in ph], np.array([p.points for p in ph])


def test_short_training_beats_identity_by_half() -> None:
    """Classical (ECC) global step + learned local flows (the paper's 'sift' row, Table 2).

    This whole-image pass alone does not beat ECC within a test-sized budget (measured 1.07 vs
    1.05 px on these phantoms), so only the identity bound is checked here; the cpu preset's path
    (preview -> learned crop refinement with test-time adaptation) must beat the preview below."""
    torch.set_num_threads(2)
    imgs, truth = _data(8)
    sec = dataclasses.replace(TINY, size=(64, 64), epochs=6, steps_per_epoch=5, batch=4, lr=2e-3,
                              global_type="classical")
    res = fit_stage1(imgs, 0, truth[0], Stage1Config(name="t", start="learned", coarse=sec),
                     seed=0)
    err = np.linalg.norm(res.points[1:] - truth[1:], axis=-1).mean()
    ident = np.linalg.norm(truth[0][None] - truth[1:], axis=-1).mean()
    assert err < 0.5 * ident, (err, ident)
    assert res.confidence.shape == truth.shape[:2]
    assert np.all((res.confidence >= 0) & (res.confidence <= 1))


def test_learned_refinement_beats_the_classical_preview() -> None:
    """The cpu preset's path on phantoms: engine.classical preview -> learned crop refinement
    (a short training run, label-free selection, then test-time adaptation on each exemplar ->
    target pair with the unsupervised losses). It must cut the error against identity by half
    AND beat the preview it starts from (measured 0.64 -> 0.37 px, identity 2.5 px)."""
    from lmk_studio.core.phantoms import make_phantom_set
    from lmk_studio.engine.classical import classical_propagate

    torch.set_num_threads(1)
    ph = make_phantom_set(8, size=(64, 64), seed=0)
    imgs, truth = [p.image for p in ph], np.array([p.points for p in ph])
    preview = np.array([truth[0]] + [classical_propagate(imgs[0], truth[0], im)[0]
                                     for im in imgs[1:]])
    ref = PassConfig(crop=24, scale=1.0, jitter_px=2.0, backbone="small_cnn", width=8,
                     d_model=16, heads=2, n_layers=1, global_type="none", epochs=2,
                     steps_per_epoch=4, batch=4, lr=1e-3, sigma=2.0, eval_every=1,
                     tta_steps=8, tta_lr=3e-3)
    res = fit_stage1(imgs, 0, truth[0], Stage1Config(name="t", start="classical", coarse=None,
                                                     refine=ref), seed=0, start_points=preview)

    def mre(p: np.ndarray) -> float:
        return float(np.linalg.norm(p[1:] - truth[1:], axis=-1).mean())

    ident = mre(np.repeat(truth[:1], len(imgs), 0))
    err, err_prev = mre(res.points), mre(preview)
    assert err < 0.5 * ident, (err, ident)
    assert err < err_prev, (err, err_prev)
    assert np.array_equal(res.start_points[1:], preview[1:])
    assert res.confidence.shape == truth.shape[:2]
    assert np.all((res.confidence >= 0) & (res.confidence <= 1))


def _trainer(seed: int = 3) -> PassTrainer:
    imgs, truth = _phantoms(5, size=48)
    pts = np.full_like(truth, np.nan)
    pts[0] = truth[0]
    known = np.zeros(5, bool)
    known[0] = True
    return PassTrainer(TINY, PassData(imgs, pts, known, 0), "whole", seed=seed)


def test_cancel_and_resume_reproduce_the_uninterrupted_run(tmp_path) -> None:
    torch.set_num_threads(2)
    full = _trainer()
    full.fit()
    ref = {k: v.clone() for k, v in full.net.state_dict().items()}

    token = CancelToken()

    def stop_in_epoch_two(ev) -> None:
        if ev.epoch == 1 and ev.step == 1:
            token.cancel()

    ck = tmp_path / "ck.pt"
    first = _trainer()
    with pytest.raises(Cancelled):
        first.fit(stop_in_epoch_two, token, ck)
    assert first.epoch == 1 and ck.exists()
    second = _trainer(seed=99)          # a different fresh state: everything must come from ck
    second.fit(checkpoint=ck, resume=True)
    for k, v in second.net.state_dict().items():
        assert torch.equal(v, ref[k]), k
