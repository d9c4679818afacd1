"""Transitive consensus: a one-off failure of the direct exemplar -> image path is outvoted by
the paths through similar images, and the disagreement shows up as spread (lower confidence)."""

from __future__ import annotations

import numpy as np
import pytest

from lmk_studio.core.errors import LmkError
from lmk_studio.engine.common import Cancelled, CancelToken
from lmk_studio.engine.stage1 import Stage1Config
from lmk_studio.engine.stage1.pipeline import neighbours, transitive_consensus


def _images(m: int = 7) -> list[np.ndarray]:
    """Image k = a blob at x = 10 + 4k: neighbours in index are neighbours in look."""
    yy, xx = np.mgrid[0:40, 0:60]
    return [np.exp(-((xx - 10 - 4 * k) ** 2 + (yy - 20) ** 2) / 30).astype(np.float32)
            for k in range(m)]


def test_neighbours_prefer_look_alikes_and_skip_exemplar_and_self() -> None:
    nb = neighbours(_images(), ex=0, k=2)
    assert set(nb) == {1, 2, 3, 4, 5, 6}
    assert nb[3] == [2, 4] or nb[3] == [4, 2]
    assert all(0 not in v and t not in v for t, v in nb.items())


def test_median_outvotes_a_failed_direct_path_and_reports_spread() -> None:
    imgs = _images()
    truth = np.array([[[10.0 + 4 * k, 20.0], [30.0, 5.0 + k]] for k in range(7)])
    pts = truth.copy()
    pts[4, 1] += (25.0, -12.0)                    # the direct path failed on image 4, landmark 1
    calls = []

    def hop(s: int, t: int, ps: np.ndarray, pt: np.ndarray) -> np.ndarray:
        calls.append((s, t))
        return ps + (truth[t] - truth[s])            # an exact registration s -> t

    out, spread = transitive_consensus(imgs, 0, pts, 2, hop)
    assert np.allclose(out[4, 1], truth[4, 1])
    assert np.allclose(out[[1, 2, 3, 5, 6]], truth[[1, 2, 3, 5, 6]])
    assert np.allclose(out[0], truth[0])               # the exemplar is never moved
    assert spread[4, 1] == 0.0                         # one dissenting path of three: robust
    assert all(s != 0 for s, _ in calls)

    def noisy_hop(s: int, t: int, ps: np.ndarray, pt: np.ndarray) -> np.ndarray:
        return ps + (truth[t] - truth[s]) + (float(s), 0.0)   # paths disagree by s px

    _, spread = transitive_consensus(imgs, 0, truth.copy(), 2, noisy_hop)
    assert (spread[1:] > 0).all() and (spread[0] == 0).all()


def test_consensus_is_cancellable_and_preset_keys_checked() -> None:
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        transitive_consensus(_images(), 0, np.zeros((7, 1, 2)), 2, lambda *a: a[2], cancel=tok)
    with pytest.raises(LmkError, match="consensus"):
        Stage1Config.from_dict({"start": "classical", "refine": {}, "consensus": {"kk": 3}})
    with pytest.raises(LmkError, match="via"):
        Stage1Config.from_dict({"start": "classical", "refine": {},
                                "consensus": {"via": "magic"}})
