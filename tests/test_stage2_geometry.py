"""Stage II geometry: T_{e->h} is exact on heatmaps, decoding is sub-pixel, selection is small-loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmk_studio.engine.stage2.c2t import (
    LandmarkLossNorm,
    heat_loss,
    select_small_loss,
    transform_easy_to_hard,
)
from lmk_studio.engine.stage2.config import Stage2Config
from lmk_studio.engine.stage2.decode import decode_heatmaps
from lmk_studio.engine.stage2.trainer import Stage2Data, build_batch, down_to_orig, orig_to_down
from lmk_studio.engine.stage2.views import (
    ViewConfig,
    apply_points,
    gaussian_heatmaps,
    heatmap_matrix,
    input_to_heatmap,
    sample_hard,
)


@pytest.mark.parametrize("stride", [1, 4])
def test_easy_to_hard_transform_moves_a_heatmap_peak_onto_the_hard_view_peak(stride: int) -> None:
    rng = np.random.default_rng(3)
    cfg = ViewConfig(rot_sigma=15.0, rot_p=1.0, scale_sigma=0.25)
    size = 128
    hm_size = size // stride
    for _ in range(10):
        m = sample_hard(rng, (size, size), cfg)        # easy input px -> hard input px
        p_in = rng.uniform(0.35 * size, 0.65 * size, size=2)
        p_hm = input_to_heatmap(p_in, stride)
        easy = gaussian_heatmaps(torch.tensor(np.array([[p_hm]])), (hm_size, hm_size), sigma=3.0)[:, 0]
        m_hm = torch.tensor(heatmap_matrix(m, stride), dtype=torch.float32)[None]
        hard = transform_easy_to_hard(easy, m_hm, (hm_size, hm_size))
        got = decode_heatmaps(hard[:, None]).points[0, 0].numpy()
        want = input_to_heatmap(apply_points(m, p_in), stride)
        assert np.linalg.norm(got - want) < 0.5, (got, want)


def test_hard_view_target_is_the_easy_target_carried_by_the_transform() -> None:
    """build_batch's own views: warping the easy target with e2h gives the hard target."""
    rng = np.random.default_rng(0)
    img = rng.random((90, 70)).astype(np.float32)
    data = Stage2Data([img], [(1.0, 1.0)], np.array([[[30.3, 41.7], [50.2, 20.9]]]),
                      np.array([[True, True]]))
    cfg = Stage2Config(patch=32, sigma=1.5, views=ViewConfig(rot_p=1.0, rot_sigma=15.0))
    b = build_batch(data, np.array([[0, 0], [0, 1]]), 2, rng, cfg, stride=1)
    carried = transform_easy_to_hard(b.t_easy, b.e2h, (32, 32))
    got = decode_heatmaps(carried[:, None]).points[:, 0]
    want = decode_heatmaps(b.t_hard[:, None]).points[:, 0]
    assert torch.linalg.norm(got - want, dim=-1).max() < 0.5


def test_subpixel_decoding_recovers_an_off_grid_peak() -> None:
    true = torch.tensor([[[17.37, 22.81], [5.5, 40.05], [30.91, 3.12]]])
    hm = gaussian_heatmaps(true, (48, 40), sigma=2.0)
    got = decode_heatmaps(hm, method="gaussian").points
    assert torch.linalg.norm(got - true, dim=-1).max() < 0.02
    soft = decode_heatmaps(hm, method="softargmax").points
    assert torch.linalg.norm(soft - true, dim=-1).max() < 0.5  # window-truncated: a fallback
    arg = decode_heatmaps(hm, method="argmax").points
    assert torch.linalg.norm(arg - true, dim=-1).max() > 0.3  # what sub-pixel decoding fixes


def test_coordinates_survive_downscaling_round_trip() -> None:
    p = np.array([[0.0, 0.0], [1339.0, 1670.0], [512.3, 77.9]])
    f = (1340 / 335, 1671 / 418)
    assert np.allclose(down_to_orig(orig_to_down(p, f), f), p)
    # the centre of a 4x4 block of original pixels is the centre of its downscaled pixel
    assert np.allclose(orig_to_down(np.array([1.5, 1.5]), (4.0, 4.0)), [0.0, 0.0])


def test_small_loss_selection_keeps_the_clean_pseudo_labels() -> None:
    """30% of pseudo-labels are moved by 6 px: an accurate detector's heat loss ranks them last."""
    rng = np.random.default_rng(1)
    n = 40
    truth = torch.tensor(rng.uniform(10, 22, size=(n, 1, 2)))
    corrupted = np.zeros(n, dtype=bool)
    corrupted[rng.choice(n, size=12, replace=False)] = True
    pseudo = truth.clone()
    ang = rng.uniform(0, 2 * np.pi, size=n)
    shift = torch.tensor(np.stack([np.cos(ang), np.sin(ang)], axis=1) * 6.0)
    pseudo[torch.from_numpy(corrupted), 0] += shift[torch.from_numpy(corrupted)]
    pred = gaussian_heatmaps(truth, (32, 32), 1.5)[:, 0] * 0.9  # a good detector, not perfect
    target = gaussian_heatmaps(pseudo, (32, 32), 1.5)[:, 0]
    scores = heat_loss(pred, target, 1.5)
    chan = torch.tensor(rng.integers(0, 4, size=n))
    for s in (scores, LandmarkLossNorm(4).normalise(scores, chan)):
        kept = select_small_loss(s, keep=0.7).numpy()
        assert len(kept) == 28
        assert not corrupted[kept].any()


class _TwoPeaks(torch.nn.Module):
    """Fake detector: a strong peak at patch (8, 8) and a weaker one at (22, 22), 1 channel."""

    stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pts = torch.tensor([[[8.0, 8.0]], [[22.0, 22.0]]])
        g = gaussian_heatmaps(pts, (32, 32), 1.5)[:, 0]
        return (g[0] + 0.7 * g[1]).expand(x.shape[0], 1, 32, 32)


def test_start_point_prior_prefers_the_peak_near_stage_one() -> None:
    from lmk_studio.engine.stage2.model import Stage2Model

    img = np.zeros((64, 64), np.float32)
    start = np.array([[37.0, 37.0]])   # patch origin 21.5: strong peak at 29.5, weak at 43.5
    got = {}
    for prior in (0.0, 6.0):
        cfg = Stage2Config(patch=32, sigma=1.5, infer_iterations=1, tta_shift=0.0,
                           prior_px=prior)
        model = Stage2Model(cfg, 1, [_TwoPeaks()])
        got[prior] = model.predict_down(img, (1.0, 1.0), start).points[0]
    assert np.allclose(got[0.0], 29.5, atol=0.05)       # no prior: the strongest peak
    assert np.all(got[6.0] > 40.0), got[6.0]            # prior: the peak nearer Stage I


def test_bundled_presets_load_and_unknown_keys_are_refused(tmp_path) -> None:
    from lmk_studio.core.errors import LmkError
    from lmk_studio.engine.stage2.config import load_preset

    for name in ("quick", "cpu", "paper"):
        cfg = load_preset(name)
        assert cfg.name == name and cfg.steps > 0
    assert load_preset("paper").detector["kind"] == "hrnet"
    bad = tmp_path / "bad.json"
    bad.write_text('{"stepz": 3}')
    with pytest.raises(LmkError, match="stepz"):
        load_preset(bad)
    with pytest.raises(LmkError, match="not found"):
        load_preset("no-such-preset")


def test_review_rescaling_moves_the_scale_and_keeps_the_ranking() -> None:
    """Reviewed points that moved 4x further than expected: the expected errors grow ~4x, the
    order of the risk scores is unchanged; with too few reviews nothing changes."""
    from lmk_studio.engine.stage2.confidence import MIN_REVIEWED, rescale_from_reviews

    cal = {"mode": "risk", "ab": [1.0, 0.5], "mu": [0.0] * 6, "sd": [1.0] * 6}
    r = np.linspace(-2, 2, 9)
    before = np.expm1(cal["ab"][0] + cal["ab"][1] * r)
    exp = np.full(MIN_REVIEWED + 5, 2.0)
    new = rescale_from_reviews(cal, exp, np.full_like(exp, 11.0))  # log1p 11 = log1p 2 + log 4
    after = np.expm1(new["ab"][0] + new["ab"][1] * r)
    assert new["ab"][1] == cal["ab"][1] and cal["ab"] == [1.0, 0.5]   # input untouched
    assert np.all(np.argsort(after) == np.argsort(before))
    assert np.allclose(np.log1p(after) - np.log1p(before), np.log(4.0))
    few = rescale_from_reviews(cal, exp[:MIN_REVIEWED - 1], np.full(MIN_REVIEWED - 1, 11.0))
    assert few["ab"] == cal["ab"] and few["reviewed_n"] == MIN_REVIEWED - 1
