"""Landmark accuracy metrics: radial error, MRE ± SD, SDR, per-landmark and per-image tables.

Pure numpy so the CLI, the benchmarks and the GUI report the *same* figures.

Conventions (stated once, used everywhere):
- A pair (prediction, truth) is *evaluated* when both are finite. A missing truth (NaN) is not an
  error of the method: it is only counted. A missing prediction where truth exists is counted as
  ``n_missing_pred`` and excluded from MRE/SD/SDR; the table prints the count next to the figures
  so an incomplete prediction set can never pass for a complete one.
- Errors are in mm when a spacing is known for every evaluated image, else in px (``unit``).
  Anisotropic spacing (row, col) scales dy by the row and dx by the column spacing.
  Pixel errors (``mre_px``, ``sd_px``) are always reported too.
- SD is the population standard deviation (numpy's default, ddof=0) of the radial errors.
- SDR(t) = share of evaluated points with radial error <= t, as a percentage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_THRESHOLDS_MM: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)


def radial_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean distance per image and landmark, (M, N); NaN where either side is missing."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"pred and truth must both be (M, N, 2); got {p.shape} and {t.shape}")
    d = p - t
    return np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2)


def _spacing_per_image(spacing: float | np.ndarray | None, m: int) -> np.ndarray | None:
    """(M, 2) (row, col) mm/px, NaN rows where unknown; None when no spacing at all.

    Accepts a scalar (isotropic, every image), (M,) per-image isotropic, (M, 2) per-image
    (row, col), or (2,) (row, col) for every image when M != 2 (ambiguous for M == 2: pass (M, 2)).
    """
    if spacing is None:
        return None
    s = np.asarray(spacing, dtype=np.float64)
    if s.ndim == 0:
        out = np.full((m, 2), float(s))
    elif s.ndim == 1 and s.shape[0] == m:
        out = np.stack([s, s], axis=1)
    elif s.ndim == 1 and s.shape[0] == 2:
        out = np.broadcast_to(s, (m, 2)).copy()
    elif s.ndim == 2 and s.shape == (m, 2):
        out = s.copy()
    else:
        raise ValueError(f"spacing must be a scalar, (M,), (M, 2) or (2,); got shape {s.shape}")
    bad = ~np.isfinite(out) | (out <= 0)
    out[bad.any(axis=1)] = np.nan
    return out


def _fmt_num(v: float | None, nd: int = 2) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def _finite_or_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


@dataclass
class LandmarkStats:
    """Figures of one landmark over all evaluated images (unit as the report's)."""

    index: int
    name: str
    n: int
    n_missing_pred: int
    mre: float
    sd: float
    median: float
    max: float
    mre_px: float
    sdr: dict[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "n": self.n,
            "n_missing_pred": self.n_missing_pred,
            "mre": _finite_or_none(self.mre),
            "sd": _finite_or_none(self.sd),
            "median": _finite_or_none(self.median),
            "max": _finite_or_none(self.max),
            "mre_px": _finite_or_none(self.mre_px),
            "sdr": {str(k): _finite_or_none(v) for k, v in self.sdr.items()},
        }


@dataclass
class MetricReport:
    """Everything ``evaluate`` prints and writes; ``errors`` keeps the raw (M, N) table."""

    unit: str  # "mm" or "px"
    n_images: int
    n_landmarks: int
    n_evaluated: int
    n_missing_pred: int
    n_missing_truth: int
    mre: float
    sd: float
    median: float
    mre_px: float
    sd_px: float
    sdr: dict[float, float]
    per_landmark: list[LandmarkStats]
    per_image_mre: list[float]
    image_names: list[str] | None = None
    errors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def thresholds(self) -> list[float]:
        return list(self.sdr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> null); thresholds become string keys, as JSON requires."""
        d: dict[str, Any] = {
            "unit": self.unit,
            "n_images": self.n_images,
            "n_landmarks": self.n_landmarks,
            "n_evaluated": self.n_evaluated,
            "n_missing_pred": self.n_missing_pred,
            "n_missing_truth": self.n_missing_truth,
            "mre": _finite_or_none(self.mre),
            "sd": _finite_or_none(self.sd),
            "median": _finite_or_none(self.median),
            "mre_px": _finite_or_none(self.mre_px),
            "sd_px": _finite_or_none(self.sd_px),
            "sdr": {str(k): _finite_or_none(v) for k, v in self.sdr.items()},
            "per_landmark": [s.to_dict() for s in self.per_landmark],
            "per_image": [
                {
                    "image": (self.image_names[i] if self.image_names else i),
                    "mre": _finite_or_none(v),
                }
                for i, v in enumerate(self.per_image_mre)
            ],
            "notes": list(self.notes),
        }
        return d

    def format_table(self) -> str:
        """Plain-text summary + per-landmark table (fixed-width, for a terminal or a log)."""
        u = self.unit
        ths = self.thresholds
        lines = [
            f"images: {self.n_images}  landmarks: {self.n_landmarks}  "
            f"points evaluated: {self.n_evaluated}  predictions missing: {self.n_missing_pred}  "
            f"truth missing: {self.n_missing_truth}",
            f"MRE: {_fmt_num(self.mre)} ± {_fmt_num(self.sd)} {u} (SD)   median {_fmt_num(self.median)} {u}"
            + (f"   [{_fmt_num(self.mre_px)} ± {_fmt_num(self.sd_px)} px]" if u != "px" else ""),
            "SDR: " + "  ".join(f"{t:g} {u}: {_fmt_num(self.sdr[t], 1)}%" for t in ths),
            "",
        ]
        name_w = max([8] + [len(s.name) for s in self.per_landmark])
        head = (
            f"{'#':>3}  {'landmark':<{name_w}}  {'n':>4}  {'miss':>4}  {'MRE':>7}  {'SD':>7}  "
            f"{'median':>7}  {'max':>7}"
            + "".join(f"  {f'≤{t:g}':>7}" for t in ths)
        )
        lines += [f"per landmark ({u}; SDR in %)", head, "-" * len(head)]
        for s in self.per_landmark:
            lines.append(
                f"{s.index + 1:>3}  {s.name:<{name_w}}  {s.n:>4}  {s.n_missing_pred:>4}  "
                f"{_fmt_num(s.mre):>7}  {_fmt_num(s.sd):>7}  {_fmt_num(s.median):>7}  "
                f"{_fmt_num(s.max):>7}" + "".join(f"  {_fmt_num(s.sdr[t], 1):>7}" for t in ths)
            )
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)


def _stats(v: np.ndarray) -> tuple[float, float, float, float]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (np.nan, np.nan, np.nan, np.nan)
    return float(v.mean()), float(v.std()), float(np.median(v)), float(v.max())


def _sdr(v: np.ndarray, thresholds: Sequence[float]) -> dict[float, float]:
    v = v[np.isfinite(v)]
    return {
        float(t): (float(100.0 * np.count_nonzero(v <= t) / v.size) if v.size else float("nan"))
        for t in thresholds
    }


def evaluate_points(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: float | np.ndarray | None,
    thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
    names: Sequence[str] | None = None,
    image_names: Sequence[str] | None = None,
) -> MetricReport:
    """Compare (M, N, 2) predictions with (M, N, 2) truth (px, NaN = missing).

    ``spacing`` in mm/px (see ``_spacing_per_image``). Thresholds are in mm when the report is in
    mm, in px otherwise (the report says which).
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    err_px = radial_errors(p, t)
    m, n = err_px.shape
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} landmark names for {n} landmarks")
    if image_names is not None and len(image_names) != m:
        raise ValueError(f"{len(image_names)} image names for {m} images")
    thresholds = [float(x) for x in thresholds_mm]
    if not thresholds or any(not np.isfinite(x) or x <= 0 for x in thresholds):
        raise ValueError(f"thresholds must be positive numbers; got {thresholds_mm!r}")

    truth_ok = np.isfinite(t).all(axis=-1)
    pred_ok = np.isfinite(p).all(axis=-1)
    evaluated = truth_ok & pred_ok
    missing_pred = truth_ok & ~pred_ok
    notes: list[str] = []

    sp = _spacing_per_image(spacing, m)
    unit = "px"
    err = np.where(evaluated, err_px, np.nan)
    if sp is not None:
        rows_used = evaluated.any(axis=1)
        unknown = rows_used & ~np.isfinite(sp).all(axis=1)
        if unknown.any():
            notes.append(
                f"pixel spacing unknown for {int(unknown.sum())} evaluated image(s): "
                "all figures in px"
            )
        else:
            d = p - t
            dy_mm = d[..., 1] * sp[:, 0:1]
            dx_mm = d[..., 0] * sp[:, 1:2]
            err = np.where(evaluated, np.sqrt(dx_mm**2 + dy_mm**2), np.nan)
            unit = "mm"
    err_px_eval = np.where(evaluated, err_px, np.nan)

    mre, sd, med, _mx = _stats(err)
    mre_px, sd_px, _, _ = _stats(err_px_eval)
    lm_names = list(names) if names is not None else [f"L{k + 1}" for k in range(n)]
    per_lm = []
    for k in range(n):
        a, s, md, mx = _stats(err[:, k])
        per_lm.append(
            LandmarkStats(
                index=k,
                name=lm_names[k],
                n=int(evaluated[:, k].sum()),
                n_missing_pred=int(missing_pred[:, k].sum()),
                mre=a,
                sd=s,
                median=md,
                max=mx,
                mre_px=_stats(err_px_eval[:, k])[0],
                sdr=_sdr(err[:, k], thresholds),
            )
        )
    per_img = [_stats(err[i])[0] for i in range(m)]
    if missing_pred.any():
        notes.append(
            f"{int(missing_pred.sum())} point(s) have truth but no prediction: excluded from "
            "MRE/SD/SDR"
        )
    return MetricReport(
        unit=unit,
        n_images=m,
        n_landmarks=n,
        n_evaluated=int(evaluated.sum()),
        n_missing_pred=int(missing_pred.sum()),
        n_missing_truth=int((~truth_ok).sum()),
        mre=mre,
        sd=sd,
        median=med,
        mre_px=mre_px,
        sd_px=sd_px,
        sdr=_sdr(err, thresholds),
        per_landmark=per_lm,
        per_image_mre=per_img,
        image_names=list(image_names) if image_names is not None else None,
        errors=err,
        notes=notes,
    )
