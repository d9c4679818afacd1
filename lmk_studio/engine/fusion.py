"""Every trusted image is an exemplar: multi-atlas propagation and label fusion, and which image
to correct next.

Why: the clinician's corrections are the only true labels beyond the exemplar. Used only as
Stage II training labels they bought little (3 corrected images: -5 % error on the rest); used as
extra atlases, each one gives every other image a second, independent registration whose errors
differ from the exemplar's, and fusing several such estimates per landmark is the classical
multi-atlas answer (label fusion: majority / weighted voting, STAPLE, joint label fusion).

What is here (numpy + OpenCV, no torch, no store writes):
- `trusted_sources`: the exemplar plus every image whose landmarks are all accepted / corrected /
  absent, with their points (the store is only read);
- `source_estimate`: one source -> one target through the classical preview's candidates
  (engine.candidates), the per-landmark candidate kind (copy / affine / flow, with or without
  the local search) applied as decided for the folder, plus a label-free patch score per point;
- `fuse`: per landmark, a score-weighted median of the sources' estimates, then the weighted
  mean of the estimates close to it (outvoted estimates drop out, agreeing ones average their
  noise); one source gives its own point back unchanged, so a single-exemplar project is
  exactly the preview it was;
- `similarity_matrix` / `pick_sources`: bounded cost with many trusted images, only the k most
  similar sources (groupwise-aligned thumbnails, engine.exemplar's alignment) serve a target;
- `correction_order`: which images to correct first, by expected help to the uncorrected ones
  (greedy coverage of the folder on the same similarity) or by low confidence.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmk_studio.core.points import Status


@dataclass(frozen=True)
class FusionParams:
    """Knobs of the fusion. Lengths are fractions of the target's long side."""

    k: int = 4                    # sources per target at most (the exemplar always one of them)
    temperature: float = 0.1      # patch score -> weight: exp(score / temperature)
    inlier: float = 0.02          # estimates this close to the weighted median are averaged
    spread_tol: float = 0.01      # confidence x exp(-spread / (spread_tol * long side))


DEFAULT_FUSION = FusionParams()


# ---- trusted images ----------------------------------------------------------------------------
def trusted_sources(proj: Any) -> dict[int, np.ndarray]:
    """{image id: (N, 2) points} of the images every landmark of which a human stands behind:
    the exemplar (its placed points) and each image whose points are all accepted, corrected or
    absent with at least one placed. Absent landmarks are NaN. The exemplar comes first."""
    n = len(proj.template)
    ex = proj.exemplar_id
    out: dict[int, np.ndarray] = {}
    allp = proj.all_points()
    order = ([ex] if ex is not None and ex in allp else []) + sorted(
        i for i in allp if i != ex)
    for iid in order:
        pts = allp[iid]
        arr = np.full((n, 2), np.nan)
        ok = True
        for p in pts:
            if p.status.is_trusted and p.placed:
                arr[p.index] = (p.x, p.y)
            elif p.status is not Status.ABSENT and iid != ex:
                ok = False
                break
        if ok and np.isfinite(arr).all(-1).any():
            out[int(iid)] = arr
    return out


def signature(sources: dict[int, np.ndarray]) -> str:
    """Short hash of the trusted images and their points (0.01 px): a run records it, so a
    later chain can tell whether the corrections changed since."""
    h = hashlib.sha1()
    for iid in sorted(sources):
        h.update(str(iid).encode())
        h.update(np.round(np.nan_to_num(sources[iid], nan=-1e9), 2).tobytes())
    return h.hexdigest()[:16]


# ---- similarity between images -----------------------------------------------------------------
def thumbnail(img: np.ndarray) -> np.ndarray | None:
    """The small contrast-normalised copy engine.exemplar ranks on (None for a blank image)."""
    from lmk_studio.engine import exemplar as exm

    return exm._prepare(np.asarray(img, dtype=np.float32), exm.DEFAULT)


def similarity_matrix(thumbs: Sequence[np.ndarray | None]) -> np.ndarray:
    """(M, M) NCC of the thumbnails after engine.exemplar's groupwise ECC alignment (to a
    median reference, O(M) registrations); -1 for a blank image, 1 on the diagonal."""
    import cv2

    from lmk_studio.engine import exemplar as exm

    p = exm.DEFAULT
    m = len(thumbs)
    sim = np.full((m, m), -1.0)
    np.fill_diagonal(sim, 1.0)
    keep = [i for i, t in enumerate(thumbs) if t is not None]
    if len(keep) < 2:
        return sim
    small = [thumbs[i] for i in keep]
    ch, cw = exm._canvas_shape([s.shape for s in small], p.size)
    canv = np.stack([cv2.resize(s, (cw, ch), interpolation=cv2.INTER_AREA) for s in small])
    levels = sorted({min(lv, p.size) for lv in p.ecc_levels}) or [p.size]
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    mats = [ident.copy() for _ in keep]
    ok = [False] * len(keep)
    aligned = canv.copy()
    for _round in range(max(1, p.rounds)):
        ref = np.median(aligned, axis=0).astype(np.float32)
        for i in range(len(keep)):
            mats[i], ok[i] = exm._align(ref, canv[i], mats[i] if ok[i] else ident, levels)
            aligned[i] = exm._warp(canv[i], mats[i]) if ok[i] else canv[i]
    s = exm._similarity(aligned, p.margin)
    sim[np.ix_(keep, keep)] = s
    np.fill_diagonal(sim, 1.0)
    return sim


def pick_sources(sim: np.ndarray, target: int, sources: Sequence[int], first: int | None,
                 k: int) -> list[int]:
    """Indices (into sim) of at most k sources for `target`: `first` (the exemplar) always,
    then the most similar others. Why the exemplar always: its candidates decide the folder's
    per-landmark candidate kind, and it is the one source every image already had."""
    rest = [s for s in sources if s != target and s != first]
    rest.sort(key=lambda s: -sim[target, s])
    head = [first] if first is not None and first != target else []
    return head + rest[:max(0, k - len(head))]


# ---- one source -> one target ------------------------------------------------------------------
def source_estimate(src_img: np.ndarray, src_pts: np.ndarray, img: np.ndarray,
                    choice: Any, cparams: Any, classical: Any = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chosen candidate per landmark from one source: (points (N, 2), label-free patch score
    (N,), confidence (N,)). Only what the choice needs is computed: the classical candidates
    (one preview), the local search for the landmarks whose winner is a searched twin, and the
    score of the winner alone; so an extra source costs about half the exemplar's full set."""
    from lmk_studio.engine import candidates as cm

    cs, conf = cm.classical_candidates(src_img, src_pts, img, classical)
    n = cs.points.shape[1]
    pts = np.full((n, 2), np.nan)
    lin = np.zeros((n, 2, 2))
    names = choice.chosen_names()
    base_of = [nm[:-len("+search")] if nm.endswith("+search") else nm for nm in names]
    for j in range(n):
        b = base_of[j] if base_of[j] in cs.names else choice.primary
        if b not in cs.names:
            b = cm.PREVIEW
        k = cs.index(b)
        pts[j], lin[j] = cs.points[k, j], cs.linear[k, j]
    searched = np.array([nm.endswith("+search") for nm in names])
    if searched.any():
        q = np.where(searched[:, None], pts, np.nan)
        moved, _ = cm.local_search(src_img, src_pts, img, q, lin, cparams.search_radius,
                                   cparams.search_window, cparams.grid)
        pts[searched] = moved[searched]
    one = cm.CandidateSet(["chosen"], pts[None].copy(), lin[None].copy())
    score = cm.candidate_scores(src_img, src_pts, img, one, cparams)[0]
    # the preview's own confidence where the preview (or its twin) won, else the score
    primary = {choice.primary, f"{choice.primary}+search"}
    out_conf = np.where([nm in primary for nm in names], conf,
                        np.clip(np.nan_to_num(score, nan=0.0), 0.0, 1.0))
    bad = ~np.isfinite(src_pts).all(-1)
    pts[bad] = np.nan
    out_conf[bad] = 0.0
    return pts, score, out_conf


# ---- fusion ------------------------------------------------------------------------------------
def _wmedian(v: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(v)
    c = np.cumsum(w[o])
    return float(v[o][np.searchsorted(c, 0.5 * c[-1])])


def fuse(points: np.ndarray, scores: np.ndarray, conf: np.ndarray, long_side: float,
         params: FusionParams = DEFAULT_FUSION, source_weight: np.ndarray | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """points (S, N, 2), scores and conf (S, N) from S sources -> (points (N, 2), confidence
    (N,), spread px (N,)).

    Per landmark: weight w_s = exp(score_s / T) (x source_weight); the weighted median point
    (per coordinate) is the robust centre; the estimates within `inlier` of it are averaged with
    their weights (if none is, the centre stays). Confidence = weighted mean of the sources'
    confidence x exp(-spread / tol), spread = weighted mean distance of those estimates from the
    answer: sources that disagree make a point to review first. One source: its point, its
    confidence."""
    pts = np.asarray(points, dtype=np.float64)
    s_n, n = pts.shape[:2]
    out = np.full((n, 2), np.nan)
    out_c = np.zeros(n)
    spread = np.zeros(n)
    sw = np.ones(s_n) if source_weight is None else np.asarray(source_weight, dtype=np.float64)
    r_in = params.inlier * long_side
    tol = max(1e-6, params.spread_tol * long_side)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for j in range(n):
            ok = np.isfinite(pts[:, j]).all(-1)
            if not ok.any():
                continue
            p = pts[ok, j]
            sc = np.nan_to_num(np.asarray(scores, dtype=np.float64)[ok, j], nan=-1.0)
            w = np.exp((sc - sc.max()) / max(params.temperature, 1e-6)) * sw[ok]
            if not np.isfinite(w).all() or w.sum() <= 0:
                w = np.ones(len(p))
            c = np.nan_to_num(np.asarray(conf, dtype=np.float64)[ok, j], nan=0.0)
            if len(p) == 1:
                out[j], out_c[j] = p[0], c[0]
                continue
            med = np.array([_wmedian(p[:, 0], w), _wmedian(p[:, 1], w)])
            d = np.linalg.norm(p - med, axis=1)
            inl = d <= r_in
            ans = (w[inl, None] * p[inl]).sum(0) / w[inl].sum() if inl.any() else med
            out[j] = ans
            spread[j] = float((w * np.linalg.norm(p - ans, axis=1)).sum() / w.sum())
            out_c[j] = float((w * c).sum() / w.sum()) * float(np.exp(-spread[j] / tol))
    return out, np.clip(out_c, 0.0, 1.0), spread


# ---- which image to correct next ---------------------------------------------------------------
def greedy_coverage(sim: np.ndarray, trusted: Sequence[int], candidates: Sequence[int],
                    count: int | None = None) -> list[tuple[int, float]]:
    """Order `candidates` by how much correcting each is expected to help the others: greedy
    facility location on the similarity. Each uncorrected image u is served by its most similar
    trusted image (cover(u)); correcting c would raise cover(u) to sim(u, c) where that is
    higher. The gain of c is the sum of those raises over the still-uncorrected images (so an
    image unlike every exemplar AND like many uncorrected images wins); pick the best, count it
    as trusted, repeat. Returns [(index, gain)] in the order to correct.

    Why not low confidence alone: the least confident images are often the odd ones (an
    unusual head position), whose labels help few other images as an atlas."""
    sim = np.asarray(sim, dtype=np.float64)
    left = list(candidates)
    cover = np.full(len(sim), -1.0)
    for t in trusted:
        cover = np.maximum(cover, sim[:, t])
    out: list[tuple[int, float]] = []
    want = len(left) if count is None else min(count, len(left))
    while left and len(out) < want:
        pool = np.array(left)
        # gain over the uncorrected images (the candidate itself included: correcting it
        # makes its own error zero, worth 1 - cover)
        raise_ = np.maximum(0.0, sim[np.ix_(pool, pool)] - cover[pool][:, None])
        gains = raise_.sum(0)
        b = int(np.argmax(gains))
        c = left.pop(b)
        out.append((int(c), float(gains[b])))
        cover = np.maximum(cover, sim[:, c])
    return out


CORRECTION_ORDERS = ("help", "confidence")


def correction_order(proj: Any, by: str = "help") -> dict[str, Any]:
    """The project's uncorrected images in the order to correct them (store read only).

    by "help": greedy_coverage on the groupwise-aligned thumbnails (value = the expected gain);
    by "confidence": lowest mean confidence of the image's predicted points first (the review
    queue's order; an image without predictions first of all, value 0). Returns {"by", "order":
    [{"image_id", "name", "value"}], "trusted": [ids], "skipped": [(name, why)], "seconds"}."""
    import time

    from lmk_studio.core.errors import LmkError
    from lmk_studio.core.images import load_image

    if by not in CORRECTION_ORDERS:
        raise LmkError(f"unknown order {by!r}: use one of {', '.join(CORRECTION_ORDERS)}")
    t0 = time.perf_counter()
    trusted = trusted_sources(proj)
    recs = [r for r in proj.images() if not r.missing]
    skipped = [(r.name, "file missing") for r in proj.images() if r.missing]
    rows: list[dict[str, Any]] = []
    if by == "confidence":
        allp = proj.all_points()
        for r in recs:
            if r.id in trusted:
                continue
            c = [p.confidence for p in allp.get(r.id, [])
                 if p.placed and not p.status.is_trusted and p.confidence is not None]
            rows.append({"image_id": r.id, "name": r.name,
                         "value": float(np.mean(c)) if c else 0.0})
        rows.sort(key=lambda d: (d["value"], d["name"]))
    else:
        thumbs, used = [], []
        for r in recs:
            try:
                t = thumbnail(load_image(r.path).normalized())
            except (LmkError, OSError, ValueError) as exc:
                skipped.append((r.name, str(exc)))
                continue
            if t is None:
                skipped.append((r.name, "blank image"))
                continue
            thumbs.append(t)
            used.append(r)
        sim = similarity_matrix(thumbs)
        tr = [k for k, r in enumerate(used) if r.id in trusted]
        cand = [k for k, r in enumerate(used) if r.id not in trusted]
        rows = [{"image_id": used[k].id, "name": used[k].name, "value": g}
                for k, g in greedy_coverage(sim, tr, cand)]
    return {"by": by, "order": rows, "trusted": sorted(trusted), "skipped": skipped,
            "seconds": time.perf_counter() - t0}
