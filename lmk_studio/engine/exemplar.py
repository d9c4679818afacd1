"""Suggest the exemplar: rank a folder's images by how typical each is, without any labels.

Why: a one-shot method carries the exemplar's landmarks to every other image, so an exemplar
that is unlike the rest (flipped, another view, an odd crop, an unusual head position) spoils the
whole folder, and an exemplar close to the folder's "centre" needs the smallest deformations.
CC2D's self-supervised candidate picking (SCP) makes the same choice: after a global alignment at
low resolution, take the image with the highest mean similarity to the others.

How (OpenCV + numpy only, no torch, so the GUI may run it on a worker thread):
1. every image is read through core.images, contrast-normalised (percentiles + CLAHE) at a small
   size and stretched onto one small common canvas (long side `size` px);
2. groupwise alignment: a robust reference (the pixelwise median of all images) is built, every
   image is aligned to it by ECC (affine, coarse to fine), the reference is rebuilt from the
   aligned images, and so on (`rounds` times). Aligning to one reference costs O(n) ECC runs
   instead of O(n^2) pairwise registrations; two images aligned to the same reference are
   aligned to each other too;
3. the score of an image is its mean normalised cross-correlation (NCC) with every other aligned
   image (one n x n matrix product), inside a margin that hides the warp's borders.

An image that ECC cannot align (a flip or a large rotation is outside ECC's reach from the
identity, and a degenerate answer is refused) keeps its unaligned copy, so it scores low and
ranks last, which is the intent. Unreadable or blank images are named and skipped.
Deterministic: no randomness, ties broken by name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lmk_studio.core.errors import LmkError


@dataclass(frozen=True)
class ExemplarParams:
    """The few knobs of the ranking (defaults checked on the Hamedan set, see
    training/reports/exemplar.md)."""

    size: int = 96                 # long side of the common canvas (px)
    prep_px: int = 256             # long side at which contrast is normalised (CLAHE)
    clahe: float = 2.0             # CLAHE clip limit (0 = percentiles only)
    rounds: int = 2                # align-to-reference rounds
    ecc_levels: tuple[int, ...] = (48, 96)   # long sides of the ECC pyramid (<= size)
    margin: float = 0.08           # fraction of each side left out of the similarity


DEFAULT = ExemplarParams()


@dataclass(frozen=True)
class Candidate:
    """One image's place in the ranking (rank 1 = the suggested exemplar)."""

    rank: int
    name: str
    path: Path
    score: float                   # mean NCC with the other images after alignment, [-1, 1]
    why: str
    aligned: bool                  # False: ECC could not align it to the others
    rotation_deg: float = 0.0      # of the global alignment to the folder's reference
    scale: float = 1.0
    image_id: int | None = None    # the project's image id, when ranked from a project


@dataclass
class Ranking:
    """The ranked images (best first), the skipped ones (path, reason) and the time taken."""

    candidates: list[Candidate]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    params: ExemplarParams = DEFAULT

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def to_json(self) -> dict[str, Any]:
        """Plain data for --json (paths as strings)."""
        return {
            "method": "groupwise ECC affine to a median reference, then mean NCC to the others",
            "params": asdict(self.params),
            "seconds": round(self.seconds, 3),
            "ranking": [{**asdict(c), "path": str(c.path)} for c in self.candidates],
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
        }


ProgressFn = Callable[[int, int], None]   # (images done, images in all)
CancelFn = Callable[[], bool]             # True = stop now


class RankingCancelled(LmkError):
    """The caller asked the ranking to stop (the GUI closed the project)."""


# ---- preparation ------------------------------------------------------------------------------
def _small(img: np.ndarray, long_px: int) -> np.ndarray:
    h, w = img.shape
    f = min(1.0, long_px / max(h, w))
    if f >= 1.0:
        return img
    return cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))),
                      interpolation=cv2.INTER_AREA)


def _prepare(img: np.ndarray, p: ExemplarParams) -> np.ndarray | None:
    """Small contrast-normalised float32 copy in [0, 1]; None for a blank (flat) image."""
    a = _small(np.nan_to_num(img.astype(np.float32, copy=False)), p.prep_px)
    lo, hi = np.percentile(a, (0.5, 99.5))
    if not hi - lo > 1e-6:
        return None
    u8 = np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    if p.clahe > 0:
        tiles = max(2, round(max(u8.shape) / 64))
        u8 = cv2.createCLAHE(clipLimit=p.clahe, tileGridSize=(tiles, tiles)).apply(u8)
    return u8.astype(np.float32) / 255.0


def _canvas_shape(shapes: Sequence[tuple[int, int]], long_px: int) -> tuple[int, int]:
    """(h, w) of the common canvas: the median aspect ratio, long side long_px."""
    aspect = float(np.median([h / w for h, w in shapes]))
    if aspect >= 1.0:
        return long_px, max(8, round(long_px / aspect))
    return max(8, round(long_px * aspect)), long_px


# ---- alignment --------------------------------------------------------------------------------
def _level(img: np.ndarray, long_px: int) -> tuple[np.ndarray, float]:
    h, w = img.shape
    f = min(1.0, long_px / max(h, w))
    if f >= 1.0:
        return img, 1.0
    return cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))),
                      interpolation=cv2.INTER_AREA), f


def _sane(m: np.ndarray) -> bool:
    """An affine the folder can plausibly need: finite, no flip, scale within 0.6-1.6."""
    a = m[:2, :2]
    if not np.isfinite(m).all() or np.linalg.det(a) <= 0:
        return False
    sv = np.linalg.svd(a, compute_uv=False)
    return bool(0.6 < sv.min() and sv.max() < 1.6)


def _align(ref: np.ndarray, img: np.ndarray, init: np.ndarray, levels: Sequence[int]
           ) -> tuple[np.ndarray, bool]:
    """2x3 affine W with img(W x) ~ ref(x) (canvas coordinates), ECC coarse to fine from init.
    Returns (W, True) or (init, False) when no level converged to a sane answer."""
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    m = init.astype(np.float64)
    ok = False
    for lp in levels:
        r, f = _level(ref, lp)
        t, _ = _level(img, lp)
        s = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1.0]])
        m3 = np.vstack([m, [0, 0, 1]])
        w0 = (s @ m3 @ np.linalg.inv(s))[:2].astype(np.float32)
        try:
            _cc, w = cv2.findTransformECC(r, t, w0, cv2.MOTION_AFFINE, crit, None, 1)
        except cv2.error:
            continue
        cand = (np.linalg.inv(s) @ np.vstack([w.astype(np.float64), [0, 0, 1]]) @ s)[:2]
        if _sane(cand):
            m, ok = cand, True
    return m, ok


def _warp(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = img.shape
    return cv2.warpAffine(img, m.astype(np.float32), (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _similarity(stack: np.ndarray, margin: float) -> np.ndarray:
    """n x n NCC matrix of the images' inner parts (margin cut off each side)."""
    n, h, w = stack.shape
    mh, mw = int(round(h * margin)), int(round(w * margin))
    v = stack[:, mh:h - mh or None, mw:w - mw or None].reshape(n, -1).astype(np.float64)
    v = v - v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.maximum(norm, 1e-9)
    return v @ v.T


# ---- the ranking ------------------------------------------------------------------------------
def _why(rank: int, n: int, score: float, aligned: bool, rot: float, scale: float,
         outlier: bool) -> str:
    if not aligned:
        return "could not be aligned to the others (flipped, rotated or another view?)"
    if outlier:
        return "unlike the others (another view, crop or exposure?)"
    notes = []
    if abs(rot) > 10:
        notes.append(f"rotated {rot:+.0f} deg")
    if abs(scale - 1) > 0.15:
        notes.append(f"scale x{scale:.2f}")
    extra = f"; {', '.join(notes)} from the rest" if notes else ""
    if rank == 1:
        return "most typical of the folder" + extra
    if rank <= max(1, math.ceil(n / 3)):
        return "typical" + extra
    if rank <= max(1, math.ceil(2 * n / 3)):
        return "ordinary" + extra
    return "less typical" + extra


def rank_exemplars(paths: Sequence[str | Path], *, ids: Sequence[int] | None = None,
                   params: ExemplarParams = DEFAULT, progress: ProgressFn | None = None,
                   cancel: CancelFn | None = None) -> Ranking:
    """Rank `paths` by how well each would serve as the exemplar (best first).

    `ids` (the project's image ids, same order) are carried into the candidates. Unreadable,
    blank or tiny images go to `skipped` with a reason; fewer than two usable images give a
    ranking of those alone (score 1.0: nothing to compare with). RankingCancelled when
    `cancel()` turns true.
    """
    from lmk_studio.core.images import load_image

    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    if ids is not None and len(ids) != len(paths):
        raise ValueError("rank_exemplars: ids and paths differ in length")
    total = len(paths)
    kept: list[int] = []
    small: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    for k, p in enumerate(paths):
        if cancel is not None and cancel():
            raise RankingCancelled("the exemplar suggestion was cancelled")
        try:
            img = load_image(p).normalized()
        except LmkError as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            skipped.append((p, str(reason)))
        except (OSError, ValueError, MemoryError, cv2.error) as exc:
            skipped.append((p, f"{type(exc).__name__}: {exc}"))
        else:
            if min(img.shape) < 16:
                skipped.append((p, f"too small ({img.shape[1]}x{img.shape[0]} px)"))
            else:
                s = _prepare(img, params)
                if s is None:
                    skipped.append((p, "blank image (no contrast)"))
                else:
                    kept.append(k)
                    small.append(s)
        if progress is not None:
            progress(k + 1, total)
    n = len(kept)
    if n == 0:
        return Ranking([], skipped, time.perf_counter() - t0, params)
    ch, cw = _canvas_shape([s.shape for s in small], params.size)
    canv = np.stack([cv2.resize(s, (cw, ch), interpolation=cv2.INTER_AREA) for s in small])
    del small
    levels = sorted({min(lv, params.size) for lv in params.ecc_levels}) or [params.size]
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    mats = [ident.copy() for _ in range(n)]
    ok = [False] * n
    aligned = canv.copy()
    if n >= 2:
        for _round in range(max(1, params.rounds)):
            ref = np.median(aligned, axis=0).astype(np.float32)
            for i in range(n):
                if cancel is not None and cancel():
                    raise RankingCancelled("the exemplar suggestion was cancelled")
                # a failed image restarts from the identity, not from a stale answer
                mats[i], ok[i] = _align(ref, canv[i], mats[i] if ok[i] else ident, levels)
                aligned[i] = _warp(canv[i], mats[i]) if ok[i] else canv[i]
        sim = _similarity(aligned, params.margin)
        np.fill_diagonal(sim, np.nan)
        scores = np.nanmean(sim, axis=1)
    else:
        ok = [True]
        scores = np.ones(1)
    names = [paths[k].name for k in kept]
    order = sorted(range(n), key=lambda i: (-round(float(scores[i]), 12), names[i], i))
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med))) or 1e-3
    out: list[Candidate] = []
    for r, i in enumerate(order, start=1):
        a = mats[i][:, :2]
        rot = math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]))
        scale = float(math.sqrt(abs(np.linalg.det(a))))
        outlier = n >= 5 and float(scores[i]) < med - 5 * mad
        k = kept[i]
        out.append(Candidate(rank=r, name=names[i], path=paths[k], score=float(scores[i]),
                             why=_why(r, n, float(scores[i]), ok[i], rot, scale, outlier),
                             aligned=ok[i], rotation_deg=rot, scale=scale,
                             image_id=None if ids is None else int(ids[k])))
    return Ranking(out, skipped, time.perf_counter() - t0, params)
