"""Trust: an expected error in px per predicted point, from label-free signals that can also see a
SYSTEMATIC failure, and the confidence and image-level triage derived from it.

Why: every signal an engine has about its own point (flow consistency, heatmap peak, agreement of
two detectors trained on the same pseudo-labels) agrees with itself when the same wrong answer is
learnt on every image: gonion on Hamedan is ~50 px off on nearly every image yet looked safe. What
does see it is the *folder*: a landmark whose points, over the whole folder, sit far from where
the other points put them under the exemplar's shape, whose locally searched twin keeps moving
away, or whose neighbourhood matches the exemplar's poorly, is a landmark that fails everywhere.
So each signal is split into its per-landmark folder median (the systematic part) and the image's
deviation from it (the image-specific part), and both enter the expected error.

Signals per point (all label-free, numpy only, cheap):

- ``search``: log(1 + px) between the point and its locally searched twin (engine.candidates'
  "+search" candidates): a point on its structure does not move when searched again;
- ``shape``: log(1 + px) between the point and where the image's other points put it under the
  exemplar's shape (an affine fit on the others, leave one out; reviewed images can be added as
  further references and the median residual is taken);
- ``score``: log(1.05 - s), s the label-free patch similarity of the point to the exemplar's
  landmark (engine.candidates' candidate score, in [-1, 1]).

The expected error is log-linear in them: log E = a + sum_k b_k (v_k - m_k) + c_k m_k, m the
folder median of v per landmark. The coefficients were chosen once, on Hamedan images 002-060
(training/bench_trust.py; reported on 061-120 and on all); nothing of the user's folder is
labelled. Where the folder median is unknown (a handful of images, or a caller that sees one
image at a time) the image's own value stands in for it and IMAGE_MODEL (fitted that way) is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURES = ("search", "shape", "score")
#: below this many images a folder median is too noisy to stand for the landmark
MIN_FOLDER = 8
#: confidence is 0.5 where the expected error equals the tolerance (2 mm at ~0.125 mm/px)
DEFAULT_TOL_PX = 16.0


@dataclass(frozen=True)
class TrustModel:
    """log E(px) = intercept + img . (v - m) + lm . m  (v: features, m: their folder medians)."""

    intercept: float
    img: tuple[float, float, float]
    lm: tuple[float, float, float]
    floor_px: float = 1.0

    def log_expected(self, v: np.ndarray, m: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        m = np.broadcast_to(np.asarray(m, dtype=np.float64), v.shape)
        return self.intercept + (v - m) @ np.asarray(self.img) + m @ np.asarray(self.lm)


# Chosen on Hamedan 002-060 (preview and Stage I points pooled, exemplar 001) by
# `training/bench_trust.py --fit`; see training/reports/trust.md.
FOLDER_MODEL = TrustModel(intercept=-0.195, img=(0.102, -0.01, 0.619), lm=(0.81, 0.358, 0.091))
IMAGE_MODEL = TrustModel(intercept=2.171, img=(0.182, 0.074, 0.576), lm=(0.182, 0.074, 0.299))


# ---- signals ---------------------------------------------------------------------------------
def shape_residual(points: np.ndarray, refs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(N,) px between each point and where the image's other points put it: per reference shape
    (R, N, 2) an affine map reference -> image is fitted on the other landmarks (least squares,
    leave one out) and applied to the landmark; the median over references. NaN where the point
    or fewer than 4 other landmarks are missing.

    Affine, not similarity: the registration itself is affine, so only what an affine cannot
    explain (the local anatomy, or a point on the wrong structure) is left."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rr = np.asarray(refs, dtype=np.float64).reshape(-1, *p.shape)
    n = len(p)
    out = np.full((len(rr), n), np.nan)
    ok_p = np.isfinite(p).all(axis=1)
    for r, ref in enumerate(rr):
        ok = ok_p & np.isfinite(ref).all(axis=1)
        x = np.c_[ref, np.ones(n)]
        for j in np.flatnonzero(ok):
            k = ok.copy()
            k[j] = False
            if k.sum() < 4:
                continue
            a, *_ = np.linalg.lstsq(x[k], p[k], rcond=None)
            out[r, j] = float(np.linalg.norm(x[j] @ a - p[j]))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(out, axis=0)


def features(points: np.ndarray, searched: np.ndarray, score: np.ndarray,
             refs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(N, 3) the signals of one image's points (see FEATURES): `searched` (N, 2) the points'
    searched twins, `score` (N,) their patch similarity, `refs` the shape references."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    d = np.linalg.norm(p - np.asarray(searched, dtype=np.float64).reshape(-1, 2), axis=1)
    s = np.clip(np.asarray(score, dtype=np.float64).ravel(), -1.0, 1.0)
    return np.stack([np.log1p(d), np.log1p(shape_residual(p, refs)), np.log(1.05 - s)], axis=1)


def folder_medians(feats: np.ndarray) -> np.ndarray:
    """(N, F) per-landmark median over the images (M, N, F); NaN with fewer than MIN_FOLDER."""
    f = np.asarray(feats, dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(f, axis=0)
        cnt = np.isfinite(f).sum(axis=0)
    return np.where(cnt >= MIN_FOLDER, med, np.nan)


def expected_error(feats: np.ndarray, folder: np.ndarray | None = None,
                   model: TrustModel | None = None) -> np.ndarray:
    """Expected radial error px, shape of feats without its last axis. `folder` (N, F) folder
    medians (NaN = unknown: the point's own value stands in). Without a model: FOLDER_MODEL when
    every median is known, else IMAGE_MODEL. NaN where a feature is missing."""
    v = np.asarray(feats, dtype=np.float64)
    m = v if folder is None else np.broadcast_to(np.asarray(folder, dtype=np.float64), v.shape)
    if model is None:
        model = FOLDER_MODEL if folder is not None and np.isfinite(folder).all() else IMAGE_MODEL
    m = np.where(np.isfinite(m), m, v)
    e = np.exp(model.log_expected(np.nan_to_num(v, nan=0.0), np.nan_to_num(m, nan=0.0)))
    e = np.maximum(e, model.floor_px)
    return np.where(np.isfinite(v).all(axis=-1), e, np.nan)


def confidence_from_expected(err_px: np.ndarray | float, tol_px: float = DEFAULT_TOL_PX
                             ) -> np.ndarray:
    """[0, 1]: 1 at no expected error, 0.5 at the tolerance (the same map as Stage II's), so
    the expected error can be read back: E = tol sqrt(1/c - 1)."""
    e = np.asarray(err_px, dtype=np.float64)
    return 1.0 / (1.0 + (e / max(float(tol_px), 1e-6)) ** 2)


def expected_from_confidence(conf: np.ndarray | float, tol_px: float = DEFAULT_TOL_PX
                             ) -> np.ndarray:
    """The inverse of confidence_from_expected (for points written with a confidence only)."""
    c = np.clip(np.asarray(conf, dtype=np.float64), 1e-9, 1.0)
    return float(tol_px) * np.sqrt(1.0 / c - 1.0)


# ---- after corrections -----------------------------------------------------------------------
def conformal_scale(expected_px: np.ndarray, actual_px: np.ndarray, landmark: np.ndarray,
                    n_landmarks: int, min_per_landmark: int = 5, level: float = 0.5
                    ) -> np.ndarray:
    """(N,) factor per landmark by which to multiply the expected error once points have been
    reviewed: the `level` quantile of actual/expected over that landmark's reviewed points
    (split-conformal on the ratio; level 0.5 makes the median ratio 1), pooled over all
    landmarks where a landmark has fewer than `min_per_landmark` reviews, 1 with none.

    Why per landmark: the label-free scale is shared, but a landmark that fails systematically
    shows it in the first few corrections, and its own ratio corrects it fastest."""
    e = np.asarray(expected_px, dtype=np.float64).ravel()
    a = np.asarray(actual_px, dtype=np.float64).ravel()
    lm = np.asarray(landmark).ravel()
    ok = np.isfinite(e) & np.isfinite(a) & (e > 0)
    if not ok.any():
        return np.ones(n_landmarks)
    r = a[ok] / e[ok]
    pooled = float(np.quantile(r, level))
    out = np.full(n_landmarks, pooled)
    for j in range(n_landmarks):
        rj = r[lm[ok] == j]
        if len(rj) >= min_per_landmark:
            out[j] = float(np.quantile(rj, level))
    return np.maximum(out, 1e-3)


# ---- images ----------------------------------------------------------------------------------
def image_expected_error(expected_px: np.ndarray, top: int = 3) -> float:
    """One image's triage figure (px): the mean of its `top` largest point expected errors.

    Why not the minimum confidence: one bad landmark that is bad on every image (the systematic
    case) makes every image's minimum alike; the mean of a few worst points still separates the
    image with several doubtful points from the image with one."""
    e = np.asarray(expected_px, dtype=np.float64).ravel()
    e = e[np.isfinite(e)]
    if len(e) == 0:
        return float("nan")
    return float(np.mean(np.sort(e)[-min(top, len(e)):]))


TRIAGE_WORST = 0.1      # share of images shown as the most likely wrong
TRIAGE_DOUBTFUL = 0.3   # the next share


def triage_levels(values: Sequence[float], worst: float = TRIAGE_WORST,
                  doubtful: float = TRIAGE_DOUBTFUL) -> list[str]:
    """'worst' / 'doubtful' / 'fine' per image by rank within the folder (larger = worse): the
    `worst` fraction first, the next `doubtful` fraction, the rest. Ranks, not thresholds, so a
    folder that is uniformly hard still shows which images to open first, and not all in red."""
    v = np.asarray(values, dtype=np.float64)
    out = ["fine"] * len(v)
    ok = np.flatnonzero(np.isfinite(v))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(-v[ok], kind="stable")]
    n_w = int(np.ceil(worst * len(ok)))
    n_d = int(np.ceil((worst + doubtful) * len(ok)))
    for rank, i in enumerate(order):
        out[int(i)] = "worst" if rank < n_w else ("doubtful" if rank < n_d else "fine")
    return out
