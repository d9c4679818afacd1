"""Stage II training: C2T beats plain retraining on corrupted pseudo-labels; cancel + resume is exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lmk_studio.engine.common import Cancelled, CancelToken
from lmk_studio.engine.stage2.config import load_preset
from lmk_studio.engine.stage2.model import Stage2Model
from lmk_studio.engine.stage2.pipeline import fit_stage2, predict_all
from lmk_studio.engine.stage2.trainer import Stage2Data, Stage2Trainer


def _toy_set(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Stand-in while core.phantoms is absent: 4 distinct shapes under a random similarity."""
    import cv2

    rng = np.random.default_rng(seed)
    base = np.array([[40.0, 50.0], [88.0, 45.0], [45.0, 110.0], [90.0, 115.0]])
    imgs, pts = [], []
    for _ in range(n):
        a = np.radians(rng.uniform(-8, 8))
        s = rng.uniform(0.92, 1.08)
        t = rng.uniform(-6, 6, 2)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * s
        p = (base - [64, 80]) @ r.T + [64, 80] + t
        im = np.full((160, 128), 0.2, np.float32) + rng.normal(0, 0.03, (160, 128)).astype(
            np.float32)
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = np.round(p).astype(int)
        cv2.circle(im, (x0, y0), 6, 0.9, -1)
        cv2.rectangle(im, (x1 - 6, y1 - 6), (x1 + 6, y1 + 6), 0.8, 2)
        cv2.line(im, (x2 - 7, y2), (x2 + 7, y2), 0.9, 2)
        cv2.line(im, (x2, y2 - 7), (x2, y2 + 7), 0.9, 2)
        cv2.circle(im, (x3, y3), 7, 0.7, 2)
        imgs.append(np.clip(im, 0, 1))
        pts.append(np.round(p))
    return imgs, np.array(pts, dtype=np.float64)


def _phantoms(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    try:
        from lmk_studio.core import phantoms
    except ImportError:
        return _toy_set(n, seed)
    items = phantoms.make_phantom_set(n, size=(160, 128), seed=seed)
    return [np.asarray(p.image, dtype=np.float32) for p in items], np.array(
        [p.points for p in items], dtype=np.float64)


def _corrupt(truth: np.ndarray, share: float, shift: float, seed: int,
             systematic: bool = False) -> np.ndarray:
    """Move `share` of the non-exemplar (image, landmark) pairs by `shift` px: random directions,
    or (systematic) one direction per landmark, the kind of bias a registration makes."""
    rng = np.random.default_rng(seed)
    pseudo = truth + rng.normal(0, 1.0, truth.shape)
    bad = rng.random(truth.shape[:2]) < share
    bad[0] = False
    ang = rng.uniform(0, 2 * np.pi, truth.shape[:2])
    if systematic:
        ang[:] = rng.uniform(0, 2 * np.pi, truth.shape[1])[None]
    off = np.stack([np.cos(ang), np.sin(ang)], axis=-1) * shift
    pseudo[bad] += off[bad]
    pseudo[0] = truth[0]
    return pseudo


def _quick(**kw):
    cfg = load_preset("quick")
    cfg = dataclasses.replace(cfg, scale=1.0, **kw)
    return cfg


def test_c2t_ends_closer_to_truth_than_plain_retraining_on_corrupted_labels() -> None:
    torch.set_num_threads(2)
    imgs, truth = _phantoms(16, seed=3)
    n = truth.shape[1]
    pseudo = _corrupt(truth, share=0.3, shift=5.0, seed=4, systematic=True)
    trusted = np.zeros(truth.shape[:2], dtype=bool)
    trusted[0] = True
    data = Stage2Data(imgs, [(1.0, 1.0)] * len(imgs), pseudo, trusted)
    errs = {}
    for name, kw in {"plain": {"n_nets": 1, "selection": "none", "cross": False},
                     "c2t": {}}.items():
        cfg = _quick(steps=90, **kw)
        tr = Stage2Trainer(cfg, data, n, seed=0)
        model = Stage2Model(cfg, n, tr.train())
        pts, _ = predict_all(model, data)
        errs[name] = float(np.linalg.norm(pts[1:] - truth[1:], axis=-1).mean())
    start = float(np.linalg.norm(pseudo[1:] - truth[1:], axis=-1).mean())
    assert errs["c2t"] < errs["plain"], (errs, start)
    assert errs["c2t"] < start, (errs, start)


def test_cancel_then_resume_reproduces_the_uninterrupted_run(tmp_path) -> None:
    torch.set_num_threads(2)
    imgs, truth = _phantoms(5, seed=1)
    n = truth.shape[1]
    trusted = np.zeros(truth.shape[:2], dtype=bool)
    trusted[0] = True
    data = Stage2Data(imgs, [(1.0, 1.0)] * len(imgs), _corrupt(truth, 0.3, 6.0, 2), trusted)
    cfg = _quick(steps=12, steps_per_epoch=4, lr_milestones=(0.5,))

    ref = Stage2Trainer(cfg, data, n, seed=5).train()

    token = CancelToken()
    first = Stage2Trainer(cfg, data, n, seed=5, checkpoint=tmp_path / "ck.pt")
    with pytest.raises(Cancelled):
        first.train(progress=lambda ev: token.cancel(), cancel=token)
    assert 0 < first.gstep < cfg.steps
    second = Stage2Trainer(cfg, data, n, seed=5, checkpoint=tmp_path / "ck.pt")
    resumed = second.train(resume=True)
    assert second.gstep == cfg.steps
    for a, b in zip(ref, resumed, strict=True):
        for (ka, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(pa, pb), ka


def test_fit_predicts_with_confidence_and_keeps_trusted_labels() -> None:
    torch.set_num_threads(2)
    imgs, truth = _phantoms(6, seed=2)
    n = truth.shape[1]
    trusted = np.zeros(truth.shape[:2], dtype=bool)
    trusted[0] = True
    trusted[3, :2] = True  # a user-corrected pair joins the labelled set
    pseudo = _corrupt(truth, 0.3, 6.0, 3)
    pseudo[3, :2] = truth[3, :2]
    data = Stage2Data(imgs, [(1.0, 1.0)] * len(imgs), pseudo, trusted)
    events = []
    res = fit_stage2(data, n, _quick(steps=20, steps_per_epoch=10), progress=events.append)
    assert np.array_equal(res.points[trusted], pseudo[trusted])
    assert np.all(res.confidence[trusted] == 1.0)
    free = ~trusted
    assert np.isfinite(res.points[free]).all()
    assert ((res.confidence[free] >= 0) & (res.confidence[free] <= 1)).all()
    assert (res.expected_error_px[free] > 0).all()
    assert any(ev.stage == "stage2" and ev.eta_s is not None for ev in events)
    assert res.model.calibration.get("n", 0) > 0


def test_cascade_model_saves_and_loads_to_identical_predictions(tmp_path) -> None:
    torch.set_num_threads(2)
    imgs, truth = _phantoms(4, seed=4)
    n = truth.shape[1]
    trusted = np.zeros(truth.shape[:2], dtype=bool)
    trusted[0] = True
    pseudo = _corrupt(truth, 0.3, 6.0, 5)
    cfg = _quick(steps=4, steps_per_epoch=2, calib_warps=1,
                 coarse={"scale": 2.0, "steps": 4, "patch": 24})
    data = Stage2Data.from_full(imgs, pseudo, trusted, cfg.scale, cfg.coarse_config().scale)
    res = fit_stage2(data, n, cfg)
    assert res.model.coarse is not None
    res.model.save(tmp_path / "m.pt")
    back = Stage2Model.load(tmp_path / "m.pt")
    c = data.coarse
    a = res.model.predict_down(data.images[2], data.factors[2], pseudo[2], c.images[2],
                               c.factors[2])
    b = back.predict_down(data.images[2], data.factors[2], pseudo[2], c.images[2], c.factors[2])
    assert np.allclose(a.points, b.points)
    assert back.calibration == res.model.calibration
