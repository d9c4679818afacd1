"""Label-free selection of the crop refinement: the untrained pass is a candidate, each landmark
may keep its own state, and a landmark assigned to epoch 0 stays exactly at its start point."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lmk_studio.engine.stage1 import PassConfig
from lmk_studio.engine.stage1.pipeline import _predict_per_landmark
from lmk_studio.engine.stage1.trainer import PassData, PassTrainer

CROP = PassConfig(crop=32, scale=1.0, jitter_px=2.0, backbone="small_cnn", width=4, d_model=16,
                  heads=2, n_layers=1, global_type="none", epochs=3, steps_per_epoch=2, batch=4,
                  lr=2e-3, sigma=2.0, eval_every=1, holdout_frac=0.3, select_per_landmark=True)


def _data(m: int = 6) -> tuple[PassData, np.ndarray]:
    rng = np.random.default_rng(0)
    imgs, truth = [], []
    for _ in range(m):
        img = np.zeros((96, 96), np.float32)
        c = np.array([[30.0, 30.0], [66.0, 40.0], [45.0, 70.0]]) + rng.uniform(-4, 4, (3, 2))
        for x, y in c:
            yy, xx = np.mgrid[0:96, 0:96]
            img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18).astype(np.float32)
        imgs.append(np.clip(img + rng.normal(0, 0.02, img.shape).astype(np.float32), 0, 1))
        truth.append(c)
    truth = np.array(truth)
    start = truth + rng.uniform(-3, 3, truth.shape)
    start[0] = truth[0]
    known = np.zeros(m, bool)
    known[0] = True
    return PassData(imgs, start, known, 0), start


def test_per_landmark_states_cover_every_landmark_and_resume(tmp_path) -> None:
    torch.set_num_threads(2)
    data, _ = _data()
    tr = PassTrainer(CROP, data, "crop", seed=0)
    ck = tmp_path / "refine.pt"
    tr.fit(checkpoint=ck)
    groups = tr.landmark_states()
    assert groups is not None
    assert sorted(j for v in groups.values() for j in v) == [0, 1, 2]
    assert set(tr.lm_states) == set(groups)                  # unused states are dropped
    assert tr.history[0]["epoch"] == 0 and "val" in tr.history[0]
    again = PassTrainer(CROP, _data()[0], "crop", seed=7)
    again.fit(checkpoint=ck, resume=True)                     # finished run: state restored
    assert again.landmark_states() == groups
    assert np.array_equal(again.lm_best_val, tr.lm_best_val)


def test_landmark_assigned_to_epoch_zero_stays_at_its_start() -> None:
    torch.set_num_threads(2)
    data, start = _data()
    tr = PassTrainer(dataclasses.replace(CROP, epochs=2), data, "crop", seed=0)
    tr.fit()
    trained = {k: v.clone() for k, v in tr.net.state_dict().items()}
    zero = PassTrainer(CROP, data, "crop", seed=0).net.state_dict()   # the untrained pass
    tr.lm_states = {0: zero, 2: trained}
    tr.lm_best_epoch = np.array([0, 2, 0])
    tr.ema = start.copy()                 # predict from the original start, as the pipeline does
    pred, steps = _predict_per_landmark(tr, [1, 2, 3])
    assert np.allclose(pred[1:4, [0, 2]], start[1:4, [0, 2]], atol=1e-4)
    tr.net.load_state_dict(trained)
    full, _ = tr.predict([1, 2, 3])
    assert np.allclose(pred[1:4, 1], full[1:4, 1])
    assert all(torch.equal(v, trained[k]) for k, v in tr.net.state_dict().items())


def test_adaptation_keeps_an_exact_start_and_restores_the_net() -> None:
    """Test-time adaptation with per-point label-free choice: where the target crop already
    equals the exemplar crop (esim 0 at the start), no adapted state can be strictly better, so
    the point stays exactly at its start; the shared net is left as it was."""
    torch.set_num_threads(1)
    data, start = _data()
    data.images[2] = data.images[0].copy()
    data.tensors[2] = data.tensors[0].clone()
    start[2] = start[0]
    cfg = dataclasses.replace(CROP, epochs=0, tta_steps=3, tta_lr=3e-3)
    tr = PassTrainer(cfg, PassData(data.images, start, data.known, 0), "crop", seed=0)
    before = {k: v.clone() for k, v in tr.net.state_dict().items()}
    pred, steps = tr.adapt_predict([1, 2, 3])
    assert np.array_equal(pred[2], start[2])
    assert (tr.tta_choice[2] == -1).all()
    assert (tr.tta_gain[1:4] >= 0).all()            # the chosen state never scores worse
    assert steps[1].shape == (2, 3, 2) and np.isfinite(pred[1:4]).all()
    assert all(torch.equal(v, before[k]) for k, v in tr.net.state_dict().items())


def test_esim_per_sample_matches_the_batch_loss() -> None:
    from lmk_studio.engine.stage1 import losses as L

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 32, 32, generator=g), torch.rand(3, 1, 32, 32, generator=g)
    m = L.landmark_mask(torch.full((3, 1, 2), 15.5), 32, 32, 2.0)
    per = L.esim_per_sample(a, b, m)
    for i in range(3):
        one = L.esim_loss(a[i:i + 1], b[i:i + 1], m[i:i + 1])
        assert torch.allclose(per[i], one, atol=1e-5)
