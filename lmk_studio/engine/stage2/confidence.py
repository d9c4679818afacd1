"""Per-landmark confidence and expected error, calibrated without any test label.

Signals (all free at inference): f-g disagreement, test-time-augmentation spread, heatmap peak,
and how far Stage II moved the Stage-I point. They are combined into one risk score with EQUAL
weights after standardising each signal over the run's own unlabelled predictions (label-free;
a multi-feature regression fitted on synthetic cases over-fitted to them and ranked worse). The
score is mapped to an expected error in px by a log-linear fit on *synthetic* cases whose truth
is known: random warps of the trusted images (exemplar, accepted, corrected), started from
points perturbed with the distance distribution Stage II observed between Stage-I points and its
own answers on the unlabelled images. No ground truth of the predicted images is used.

Honest caveat: the trusted images were training images, so the synthetic errors are optimistic:
the ranking is what to trust; the absolute expected error is a lower bound (the benchmark
reports both) until the user has reviewed points of an earlier run: then
`rescale_from_reviews` moves the scale to match how far the reviewer really moved them.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .model import RawPrediction, Stage2Model
from .trainer import Stage2Data, down_to_orig, orig_to_down

FEATURES = ("const", "log_fg", "log_tta", "peak", "log_spread", "log_move")


def features(raw: RawPrediction) -> np.ndarray:
    """(N, F) signals per landmark; rows of unpredicted landmarks are NaN."""
    pv = raw.per_view  # (V,K,N,2)
    final = raw.points
    if pv.shape[1] >= 2:
        d_fg = np.linalg.norm(pv[:, 0] - pv[:, 1], axis=-1).mean(axis=0)
    else:
        d_fg = np.zeros(final.shape[0])
    tta = np.sqrt((np.linalg.norm(pv - final[None, None], axis=-1) ** 2).mean(axis=(0, 1)))
    peak = raw.peaks.mean(axis=(0, 1))
    spread = raw.spreads.mean(axis=(0, 1))
    move = np.linalg.norm(final - raw.init, axis=-1)
    return np.stack([np.ones_like(peak), np.log1p(d_fg), np.log1p(tta), peak,
                     np.log1p(spread), np.log1p(move)], axis=1)


def fit_error_model(x: np.ndarray, err: np.ndarray, ridge: float = 1e-2) -> np.ndarray:
    """Ridge regression of log1p(error) on the features (intercept not penalised)."""
    ok = np.isfinite(x).all(axis=1) & np.isfinite(err)
    x, y = x[ok], np.log1p(err[ok])
    reg = ridge * np.eye(x.shape[1])
    reg[0, 0] = 0.0
    return np.linalg.solve(x.T @ x + reg * len(x), x.T @ y)


RISK_WEIGHTS = np.array([0.0, 1.0, 1.0, -1.0, 0.0, 1.0])  # fg, tta, -peak, move


def risk_score(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Equal-weight sum of standardised signals; larger = more likely wrong."""
    z = (x - mu) / np.maximum(sd, 1e-9)
    return z @ RISK_WEIGHTS


def expected_error(x: np.ndarray, coef: np.ndarray | None) -> np.ndarray:
    """Expected radial error (px). Without a fitted model: f-g / TTA disagreement, a heuristic."""
    if coef is None or len(coef) != x.shape[1]:
        return np.expm1(np.maximum(x[:, 1], x[:, 2])) + 1.0
    return np.maximum(0.5, np.expm1(x @ np.asarray(coef)))


def confidence_from_error(err_px: np.ndarray, tol_px: float) -> np.ndarray:
    """[0,1]: 1 when the expected error is 0, 0.5 at the tolerance (2 mm by default)."""
    return 1.0 / (1.0 + (np.asarray(err_px) / max(tol_px, 1e-6)) ** 2)


def _random_warp(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    ang = math.radians(rng.uniform(-8, 8))
    sc = rng.uniform(0.92, 1.08)
    tx, ty = rng.uniform(-0.04, 0.04) * w, rng.uniform(-0.04, 0.04) * h
    c, s = math.cos(ang) * sc, math.sin(ang) * sc
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return np.array([[c, -s, cx - c * cx + s * cy + tx], [s, c, cy - s * cx - c * cy + ty]])


def calibrate(model: Stage2Model, data: Stage2Data, move_px: np.ndarray,
              seed: int = 0, unlabelled_features: np.ndarray | None = None) -> dict:
    """Fit the error model on synthetic warps of trusted images (see module doc).

    move_px: distances |Stage-I - Stage-II| seen on unlabelled images (original px); start points
    of the synthetic cases are perturbed by radii resampled from them.
    """
    rng = np.random.default_rng([seed, 99])
    move = np.asarray(move_px, dtype=np.float64)
    move = move[np.isfinite(move)]
    if len(move) == 0:
        move = np.array([10.0])
    xs, errs = [], []
    imgs = np.flatnonzero(data.trusted.any(axis=1))
    for i in imgs:
        down, f = data.images[i], data.factors[i]
        lm = np.flatnonzero(data.trusted[i] & np.isfinite(data.points[i]).all(axis=1))
        truth_d = orig_to_down(data.points[i, lm], f)
        for _ in range(model.cfg.calib_warps):
            a = _random_warp(rng, down.shape)
            g = float(np.exp(rng.uniform(-0.2, 0.2)))
            warped = cv2.warpAffine(down, a, (down.shape[1], down.shape[0]),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            warped = np.clip(warped, 0, 1) ** g
            t_d = truth_d @ a[:, :2].T + a[:, 2]
            t_o = down_to_orig(t_d, f)
            r = rng.choice(move, size=len(lm))
            th = rng.uniform(0, 2 * np.pi, size=len(lm))
            init = np.full((model.n_landmarks, 2), np.nan)
            init[lm] = t_o + np.stack([r * np.cos(th), r * np.sin(th)], axis=1)
            cd = cf = None
            if data.coarse is not None:
                ch, cw = data.coarse.images[i].shape
                cd = cv2.resize(warped, (cw, ch), interpolation=cv2.INTER_AREA).astype(np.float32)
                cf = data.coarse.factors[i]
            raw = model.predict_down(warped.astype(np.float32), f, init, cd, cf)
            xs.append(features(raw)[lm])
            errs.append(np.linalg.norm(raw.points[lm] - t_o, axis=1))
    x = np.concatenate(xs) if xs else np.zeros((0, len(FEATURES)))
    e = np.concatenate(errs) if errs else np.zeros(0)
    if len(e) < len(FEATURES) + 2:
        return {"coef": None, "n": int(len(e))}
    ref = unlabelled_features if unlabelled_features is not None and len(
        unlabelled_features) else x
    ref = ref[np.isfinite(ref).all(axis=1)]
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    r = risk_score(x, mu, sd)
    ok = np.isfinite(r) & np.isfinite(e)
    a_b = fit_error_model(np.stack([np.ones(ok.sum()), r[ok]], axis=1), e[ok])
    slope_fitted = float(a_b[1])
    if a_b[1] <= 0:  # synthetic cases too easy to show the trend: keep the ranking, flat scale
        a_b[1] = 1e-3
    pred = np.expm1(a_b[0] + a_b[1] * r[ok])
    return {"mode": "risk", "ab": a_b.tolist(), "slope_fitted": slope_fitted,
            "mu": mu.tolist(), "sd": sd.tolist(), "features": list(FEATURES),
            "n": int(len(e)), "synthetic_mre_px": float(e.mean()),
            "synthetic_pred_mean_px": float(pred.mean())}


MIN_REVIEWED = 10  # fewer reviewed points than this: too few to move the scale


def rescale_from_reviews(calibration: dict, expected_prev_px: np.ndarray,
                         actual_px: np.ndarray) -> dict:
    """Correct the expected-error SCALE with the reviewer's own verdicts.

    The synthetic fit above under-estimates real errors (its cases are easy). Once the user has
    reviewed points of an earlier run, each one is a real (expected, actual) pair: actual = how far
    the human moved that run's point (0 when accepted as is). The median log ratio shifts the
    intercept of the risk model, so the ranking is unchanged and the scale follows the user's
    judgement. No label of an unreviewed image is used. Returns a new dict (also without reviews).
    """
    cal = dict(calibration or {})
    e = np.asarray(expected_prev_px, dtype=np.float64).ravel()
    a = np.asarray(actual_px, dtype=np.float64).ravel()
    ok = np.isfinite(e) & np.isfinite(a) & (e > 0)
    cal["reviewed_n"] = int(ok.sum())
    if cal.get("mode") != "risk" or ok.sum() < MIN_REVIEWED:
        return cal
    shift = float(np.median(np.log1p(a[ok]) - np.log1p(e[ok])))
    ab = list(cal["ab"])
    ab[0] = float(ab[0]) + shift
    cal["ab"] = ab
    cal["review_shift"] = shift
    cal["reviewed_mean_actual_px"] = float(a[ok].mean())
    cal["reviewed_mean_expected_px"] = float(e[ok].mean())
    return cal


def score(raw: RawPrediction, calibration: dict, tol_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(confidence (N,), expected error px (N,)) for one image's prediction."""
    x = np.nan_to_num(features(raw), nan=0.0)
    if calibration and calibration.get("mode") == "risk":
        a, b = calibration["ab"]
        r = risk_score(x, np.array(calibration["mu"]), np.array(calibration["sd"]))
        e = np.maximum(0.5, np.expm1(a + b * r))
    else:
        coef = calibration.get("coef") if calibration else None
        e = expected_error(x, None if coef is None else np.array(coef))
    e[~np.isfinite(raw.points).all(axis=1)] = np.nan
    return confidence_from_error(e, tol_px), e
