"""Instant classical preview: ECC affine alignment + OpenCV DIS dense optical flow (no training).

Why: the user should see every image's landmarks within seconds of marking the exemplar, before
any learning; the same answer is the cpu preset's Stage I starting point and the baseline the
learned Stage I must beat.

Pipeline for one target image (OpenCV + numpy only):
1. both images at a working resolution (long side `work_px`), contrast-normalised (CLAHE) so
   exposure differences do not read as motion;
2. global step: ECC (intensity-based, cv2.findTransformECC) affine, coarse to fine on small
   copies. Intensity alignment is used rather than keypoints + RANSAC, whose inliers gather on
   rigid hardware (a cephalostat's ruler) instead of anatomy;
3. local step: DIS optical flow (cv2.DISOpticalFlow) from the exemplar to the affinely aligned
   target, and back; each landmark is carried by the mean of the forward flow sampled at its
   position and the inverted backward flow;
4. confidence in [0, 1] per landmark from forward-backward consistency of the flow at the point
   and the normalised cross-correlation between the exemplar patch and the flow-aligned target
   patch around it.

Coordinates are float pixels with the origin at the centre of the top-left pixel (core.points).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lmk_studio.core.errors import LmkError
from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.engine.patches import patch_at

RUN_KIND = "classical"


@dataclass(frozen=True)
class ClassicalParams:
    """The few knobs of the preview (defaults tuned on the Hamedan development set: see
    training/reports/classical.md)."""

    work_px: int = 512            # long side of the flow resolution
    ecc_px: tuple[int, ...] = (96, 192)   # long sides of the ECC pyramid
    dis_preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    patch: int = 8                # DIS patch size (px at work resolution)
    stride: int = 4               # DIS patch stride
    var_iters: int = 5            # variational refinement iterations (0 = off)
    clahe: float = 2.0            # CLAHE clip limit (0 = plain min-max)
    ncc_radius: float = 0.025     # NCC patch half-size, fraction of the work long side
    fb_scale: float = 0.01        # forward-backward error (fraction of long side) at conf e^-1
    symmetric: bool = True        # average the forward estimate with the inverted backward one


DEFAULT = ClassicalParams()


# ---- image helpers -----------------------------------------------------------------------------
def _check(img: Any, what: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 2 or a.shape[0] < 16 or a.shape[1] < 16:
        raise LmkError(f"classical preview: {what} must be a 2-D grey image of at least 16x16 "
                       f"pixels, got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    return a


def _resize(img: np.ndarray, long_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the long side is at most long_px; returns (image, factors (fx, fy) work/full)."""
    h, w = img.shape
    # keep the short side >= 16 px (DIS needs 12+ at its coarsest level) for very thin images
    f = min(1.0, max(long_px / max(h, w), 16.0 / min(h, w)))
    if f >= 1.0:
        return img, np.ones(2)
    size = (max(16, round(w * f)), max(16, round(h * f)))
    out = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return out, np.array([size[0] / w, size[1] / h])


def _smat(f: np.ndarray) -> np.ndarray:
    """3x3 full -> work map for factors (fx, fy), pixel-centre convention."""
    return np.array([[f[0], 0, 0.5 * f[0] - 0.5], [0, f[1], 0.5 * f[1] - 0.5], [0, 0, 1.0]])


def _to_u8(img: np.ndarray, clahe: float) -> np.ndarray:
    lo, hi = np.percentile(img, (0.5, 99.5))
    u8 = np.clip((img - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    if clahe > 0:
        tiles = max(2, round(max(img.shape) / 64))
        u8 = cv2.createCLAHE(clipLimit=clahe, tileGridSize=(tiles, tiles)).apply(u8)
    return u8


def _scale_pts(p: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Full -> work coordinates for factor f (pixel-centre convention)."""
    return (p + 0.5) * f - 0.5


def _sample(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear sample of an HxWxC field at float (x, y) points, border clamped."""
    mx = pts[:, 0].astype(np.float32).reshape(-1, 1)
    my = pts[:, 1].astype(np.float32).reshape(-1, 1)
    out = cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(pts), -1).astype(np.float64)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


# ---- global step -------------------------------------------------------------------------------
def ecc_affine(ex_u8: np.ndarray, tg_u8: np.ndarray, levels: Sequence[int]) -> tuple[
        np.ndarray, float]:
    """3x3 affine mapping exemplar work coordinates to target work coordinates, by ECC run
    coarse to fine on copies with long side in `levels`; identity if ECC fails or diverges.
    Returns (matrix, ECC correlation at the finest level, -1 if it failed)."""
    # start from "same relative position" (images of different sizes are stretched onto each
    # other), pixel-centre convention: x_t = (x_e + 0.5) * w_t / w_e - 0.5
    kx = tg_u8.shape[1] / ex_u8.shape[1]
    ky = tg_u8.shape[0] / ex_u8.shape[0]
    m = np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1.0]])
    stretch_inv = np.diag([1 / kx, 1 / ky])
    cc = -1.0
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    for lp in levels:
        a, fa = _resize(ex_u8.astype(np.float32) / 255.0, lp)
        b, fb = _resize(tg_u8.astype(np.float32) / 255.0, lp)
        # work -> level coordinates: x_l = (x + 0.5) f - 0.5
        sa, sb = _smat(fa), _smat(fb)
        init = (sb @ m @ np.linalg.inv(sa))[:2].astype(np.float32)
        if b.shape != a.shape:   # ECC needs equal sizes: pad/crop the target to the exemplar's
            pad = np.zeros_like(a)
            hh, ww = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
            pad[:hh, :ww] = b[:hh, :ww]
            b = pad
        try:
            c, w = cv2.findTransformECC(a, b, init.copy(), cv2.MOTION_AFFINE, crit, None, 3)
        except cv2.error:
            continue
        w3 = np.vstack([w.astype(np.float64), [0, 0, 1]])
        cand = np.linalg.inv(sb) @ w3 @ sa
        sv = np.linalg.svd(cand[:2, :2] @ stretch_inv, compute_uv=False)
        if not (np.isfinite(cand).all() and 0.5 < sv.min() and sv.max() < 2.0):
            continue
        m, cc = cand, float(c)
    return m, cc


def ecc_global(ex_img: np.ndarray, img: np.ndarray,
               params: ClassicalParams = DEFAULT) -> tuple[np.ndarray, float]:
    """The preview's global step alone: 3x3 affine mapping exemplar full-resolution coordinates
    to target full-resolution coordinates (ECC on CLAHE copies), and the ECC correlation."""
    ex, tg = _check(ex_img, "exemplar image"), _check(img, "target image")
    exw, fe = _resize(ex, params.work_px)
    tgw, ft = _resize(tg, params.work_px)
    exu, tgu = _to_u8(exw, params.clahe), _to_u8(tgw, params.clahe)
    m, cc = ecc_affine(exu, tgu, [lv for lv in params.ecc_px if lv <= max(exu.shape)] or
                       [max(exu.shape)])
    return np.linalg.inv(_smat(ft)) @ m @ _smat(fe), cc


# ---- the preview -------------------------------------------------------------------------------
def _dis(p: ClassicalParams) -> cv2.DISOpticalFlow:
    d = cv2.DISOpticalFlow_create(p.dis_preset)
    d.setPatchSize(p.patch)
    d.setPatchStride(p.stride)
    d.setVariationalRefinementIterations(p.var_iters)
    d.setUseMeanNormalization(True)
    d.setUseSpatialPropagation(True)
    return d


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-9 else 0.0




def classical_propagate(ex_img: np.ndarray, ex_pts: np.ndarray, img: np.ndarray, *,
                        scale: int | None = None, params: ClassicalParams = DEFAULT,
                        return_details: bool = False) -> Any:
    """Carry the exemplar's landmarks (N, 2) onto `img`; returns (points (N, 2), confidence (N,)).

    Images are float32 HxW (any range; [0, 1] expected) at full resolution, possibly of different
    sizes. `scale` overrides the working long side in px. NaN exemplar points stay NaN (conf 0).
    With return_details, a third item gives the global matrix, ECC score and timings.
    """
    t0 = time.perf_counter()
    ex = _check(ex_img, "exemplar image")
    tg = _check(img, "target image")
    ex_pts = np.asarray(ex_pts, dtype=np.float64).reshape(-1, 2)
    p = params if scale is None else ClassicalParams(**{**asdict(params), "work_px": int(scale)})
    exw, fe = _resize(ex, p.work_px)
    tgw, ft = _resize(tg, p.work_px)
    exu, tgu = _to_u8(exw, p.clahe), _to_u8(tgw, p.clahe)
    m, cc = ecc_affine(exu, tgu, [lv for lv in p.ecc_px if lv <= max(exu.shape)] or
                       [max(exu.shape)])
    t1 = time.perf_counter()
    h, w = exu.shape
    # target resampled into the exemplar's work frame through the affine: tga(x) = tgu(M x)
    tga = cv2.warpAffine(tgu, m[:2].astype(np.float32), (w, h),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    dis = _dis(p)
    fwd = dis.calc(exu, tga, None)
    bwd = dis.calc(tga, exu, None)
    t2 = time.perf_counter()

    ok = np.isfinite(ex_pts).all(axis=1)
    pw = _scale_pts(np.where(ok[:, None], ex_pts, 0.0), fe)
    pw[:, 0] = np.clip(pw[:, 0], 0, w - 1)
    pw[:, 1] = np.clip(pw[:, 1], 0, h - 1)
    q = pw + _sample(fwd, pw)                     # in the aligned-target frame
    back = q + _sample(bwd, q)
    fb = np.linalg.norm(back - pw, axis=1)         # work px
    if p.symmetric:
        # second estimate from the backward flow: solve qb + bwd(qb) = pw by fixed point, then
        # average the two (halves the flow noise that is independent between the directions)
        qb = q.copy()
        for _ in range(10):
            qb = pw - _sample(bwd, qb)
        q = 0.5 * (q + qb)
    out_w = _apply(m, q)                           # target work coordinates
    out = (out_w + 0.5) / ft - 0.5                 # target full coordinates

    # local similarity: exemplar patch vs the flow-aligned target patch around the point
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    aligned = cv2.remap(tga, xx + fwd[..., 0], yy + fwd[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    r = max(3, round(p.ncc_radius * max(h, w)))
    exf = exu.astype(np.float32)
    ncc = np.array([_ncc(patch_at(exf, c, r), patch_at(aligned, c, r)) for c in pw])
    fb_tol = max(0.5, p.fb_scale * max(h, w))
    conf = np.clip(ncc, 0.0, 1.0) * np.exp(-fb / fb_tol)
    bad = ok & ~(np.isfinite(out).all(axis=1) & np.isfinite(conf))
    if bad.any():   # flow undefined there (degenerate image): the global step alone, conf 0
        out[bad] = (_apply(m, pw[bad]) + 0.5) / ft - 0.5
        conf[bad] = 0.0
    th, tw = tg.shape
    out[:, 0] = np.clip(out[:, 0], -0.5, tw - 0.5)    # never outside the target image
    out[:, 1] = np.clip(out[:, 1], -0.5, th - 0.5)
    out[~ok] = np.nan
    conf[~ok] = 0.0
    conf = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0)
    if not return_details:
        return out, conf
    # the global step alone, in target full coordinates: a candidate of its own for landmarks
    # the local flow carries astray (engine.candidates)
    aff = (_apply(m, pw) + 0.5) / ft - 0.5
    aff[~ok] = np.nan
    details = {"affine_work": m, "ecc_cc": cc, "fb_work_px": fb, "ncc": ncc,
               "affine_points": aff,
               "affine_full": np.linalg.inv(_smat(ft)) @ m @ _smat(fe),
               "factor_ex": fe, "factor_target": ft,
               "timing_s": {"global": t1 - t0, "flow": t2 - t1,
                            "total": time.perf_counter() - t0}}
    return out, conf, details


# ---- store job ---------------------------------------------------------------------------------
def _open(project: Any):
    if isinstance(project, str | Path):
        from lmk_studio.core.store import Project

        return Project.open(Path(project)), True
    return project, False


def _load(path: Path) -> np.ndarray:
    from lmk_studio.core.images import load_image

    return load_image(path).normalized()


#: fewer images than this in a run: reuse the per-landmark candidate choice of an earlier run
MIN_IMAGES_FOR_CHOICE = 8


def _earlier_choice(proj: Any, names: Sequence[str], primary: str):
    """The per-landmark choice of the newest finished preview run that decided over at least
    MIN_IMAGES_FOR_CHOICE images with the same candidate names, else None."""
    from lmk_studio.engine import candidates as cmod

    for r in sorted(proj.runs(), key=lambda r: r.id, reverse=True):
        m = r.metrics or {}
        c = m.get("candidates") or {}
        if (r.kind != RUN_KIND or r.status != "finished"
                or int(m.get("images") or 0) < MIN_IMAGES_FOR_CHOICE
                or list(c.get("names") or []) != list(names)
                or list(c.get("landmarks") or []) != list(proj.template.names)):
            continue
        chosen = c.get("chosen_per_landmark") or []
        try:
            idx = np.array([list(names).index(x) for x in chosen], dtype=int)
        except ValueError:
            continue
        gains = np.array([[np.nan if g is None else g for g in row]
                          for row in c.get("gain_over_primary") or []], dtype=float)
        return cmod.Choice(list(names), idx, gains, primary)
    return None


def _fuse_sources(proj: Any, done: list, finals: list, scores: list, choice: Any,
                  cparams: Any, params: ClassicalParams, fparams: Any, ex_id: int,
                  ex_img: np.ndarray, ex_pts: np.ndarray, sources: dict[int, np.ndarray],
                  src_imgs: dict[int, np.ndarray], thumbs: dict[int, Any], progress: Any,
                  cancel: Any, faults: list[str]) -> tuple[list, dict[str, Any]]:
    """The second pass of a preview with several trusted images: for each target, the estimates
    from its k sources (the exemplar's, already chosen, plus engine.fusion.source_estimate from
    the others with the same per-landmark candidate kind) fused per landmark.

    Why a second pass: the candidate kind per landmark is decided over the whole folder from the
    exemplar's candidates, so the other sources can only apply it once every target has been
    seen; the targets are loaded again rather than all held in memory."""
    from lmk_studio.engine import fusion as fmod
    from lmk_studio.engine.common import EtaClock, ProgressEvent

    order = [ex_id, *src_imgs]
    tgt_ids = [rec.id for rec, *_ in done]
    pick: dict[int, list[int]] = {}
    if 1 + len(src_imgs) > fparams.k:
        ids = order + tgt_ids
        sim = fmod.similarity_matrix([thumbs.get(i) for i in ids])
        for t, tid in enumerate(tgt_ids, start=len(order)):
            chosen = fmod.pick_sources(sim, t, range(len(order)), 0, fparams.k)
            pick[tid] = [order[c] for c in chosen if c != 0]
    else:
        pick = {tid: list(src_imgs) for tid in tgt_ids}
    clock = EtaClock(len(done))
    out, spreads, n_src = [], [], []
    for i, ((rec, _p, _c, cs), (_r, pts, conf)) in enumerate(zip(done, finals, strict=True)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if cs is not None and choice is not None:
            sc0 = np.array([scores[i][cs.index(nm), j] if nm in cs.names else np.nan
                            for j, nm in enumerate(choice.chosen_names())])
        else:
            sc0 = np.asarray(conf, dtype=np.float64)
        est_p, est_s, est_c = [pts], [sc0], [conf]
        try:
            img = _load(rec.path)
            for sid in pick.get(rec.id, []):
                if choice is not None and cparams is not None:
                    p_s, s_s, c_s = fmod.source_estimate(src_imgs[sid], sources[sid], img,
                                                         choice, cparams, params)
                else:
                    p_s, c_s = classical_propagate(src_imgs[sid], sources[sid], img,
                                                   params=params)
                    s_s = c_s
                est_p.append(p_s)
                est_s.append(s_s)
                est_c.append(c_s)
        except (LmkError, ValueError, cv2.error) as exc:
            faults.append(f"{rec.name}: the other trusted images could not be used ({exc}); "
                          "the exemplar's estimate is kept")
        fp, fc, sp = fmod.fuse(np.stack(est_p), np.stack(est_s), np.stack(est_c),
                               float(max(img.shape)) if len(est_p) > 1 else 1.0, fparams)
        keep = ~np.isfinite(fp).all(-1)
        fp[keep] = pts[keep]
        out.append((rec, fp, fc))
        spreads.append(sp)
        n_src.append(len(est_p))
        progress(ProgressEvent(stage="classical-fusion", epoch=0, epochs=1, step=i + 1,
                               steps=len(done), eta_s=clock.eta(i + 1),
                               message=f"fusing {len(est_p)} trusted images on {rec.name}"))
    return out, {"trusted_images": len(order), "sources_per_target": float(np.mean(n_src)),
                 "mean_spread_px": float(np.mean(spreads)) if spreads else None}


def run_classical_job(project: Any, progress: Any = None, cancel: Any = None,
                      images: Sequence[int] | None = None,
                      params: ClassicalParams = DEFAULT,
                      candidates: Any = "default", fusion: Any = "default") -> int:
    """Preview every (or the given) non-exemplar image of a project; returns the run id.

    With `candidates` (engine.candidates.CandidateParams; "default" = its defaults; None = the
    plain preview), every image first gets its candidates and their label-free scores, then one
    candidate kind is chosen per landmark over the images of this run (e.g. the exemplar's point
    copied for a landmark on a structure fixed to the imaging device), and the run's metrics
    record which candidate won for each landmark. Nothing is written before every image has its
    candidates (a cancel then leaves the points as they were).

    Writes Status.PREDICTED / Source.CLASSICAL points with confidence, image by image (each its
    own transaction, so a crash while writing keeps the images done), re-reading the current
    points just before each write so trusted (exemplar, accepted, corrected) and ABSENT points
    are never overwritten. Every prediction also goes to the run's history (record_predictions).

    Every trusted image (engine.fusion.trusted_sources: the exemplar and each image whose points
    are all accepted / corrected / absent) is a source: `fusion` (engine.fusion.FusionParams;
    "default" = its defaults; None = the exemplar alone) propagates from up to `k` of them (the
    exemplar and the most similar others) to each other image and fuses the estimates per
    landmark; trusted images are not previewed. With the exemplar as the only trusted image the
    result is the single-exemplar preview, unchanged. The run's config records the sources and
    their signature (engine.jobs re-runs the preview when the corrections change).
    """
    from lmk_studio.engine import candidates as cmod
    from lmk_studio.engine import fusion as fmod
    from lmk_studio.engine.common import Cancelled, EtaClock, ProgressEvent, no_progress

    cparams = cmod.DEFAULT_CANDIDATES if candidates == "default" else candidates
    fparams = fmod.DEFAULT_FUSION if fusion == "default" else fusion

    progress = progress or no_progress
    proj, owned = _open(project)
    try:
        ex_id = proj.exemplar_id
        if ex_id is None:
            raise LmkError(f"{proj.path}: no exemplar yet: mark the landmarks on one image first")
        n = len(proj.template)
        ex_pts = np.full((n, 2), np.nan)
        for q in proj.points(ex_id):
            if q.placed:
                ex_pts[q.index] = (q.x, q.y)
        if not np.isfinite(ex_pts).all(axis=1).any():
            raise LmkError(f"{proj.path}: the exemplar has no placed landmarks yet")
        ex_rec = proj.image(ex_id)
        sources = fmod.trusted_sources(proj)
        sources[ex_id] = ex_pts
        extra_ids = [i for i in sources if i != ex_id] if fparams is not None else []
        wanted = None if images is None else {int(i) for i in images}
        # a fully trusted image has nothing to preview: it is a source, never a target
        todo = [r for r in proj.images()
                if r.id != ex_id and r.id not in sources and (wanted is None or r.id in wanted)]
        method = "ECC affine + DIS optical flow"
        if cparams is not None:
            method += " + per-landmark candidate choice (engine.candidates)"
        if extra_ids:
            method += f" + fusion over {1 + len(extra_ids)} trusted images (engine.fusion)"
        run_id = proj.start_run(RUN_KIND, {
            "method": method, "params": asdict(params), "exemplar": ex_id, "images": len(todo),
            "candidates": asdict(cparams) if cparams is not None else None,
            "fusion": asdict(fparams) if fparams is not None else None,
            "sources": [ex_id, *extra_ids],
            "trusted_signature": fmod.signature(sources)})
        faults: list[str] = []
        written = kept = 0
        confs: list[float] = []
        per_image: list[float] = []
        try:
            try:
                ex_img = _load(ex_rec.path)
            except LmkError as exc:
                raise LmkError(f"the exemplar image cannot be loaded: {exc}") from exc
            clock = EtaClock(len(todo))
            src_imgs: dict[int, np.ndarray] = {}
            for sid in extra_ids:
                try:
                    src_imgs[sid] = _load(proj.image(sid).path)
                except LmkError as exc:
                    faults.append(f"trusted image {proj.image(sid).name} not used as a source: "
                                  f"{exc}")
            # with more trusted images than a target may use, pick the most similar ones
            need_thumbs = fparams is not None and 1 + len(src_imgs) > fparams.k
            thumbs: dict[int, Any] = {}
            if need_thumbs:
                thumbs[ex_id] = fmod.thumbnail(ex_img)
                for sid, im in src_imgs.items():
                    thumbs[sid] = fmod.thumbnail(im)
            done: list[tuple[Any, np.ndarray, np.ndarray, Any]] = []  # rec, pts, conf, cands
            scores: list[np.ndarray] = []
            for k, rec in enumerate(todo):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                t0 = time.perf_counter()
                # each image's failure is its own: named, skipped, the rest predicted
                try:
                    img = _load(rec.path)
                    if need_thumbs:
                        thumbs[rec.id] = fmod.thumbnail(img)
                    if cparams is None:
                        pts, conf = classical_propagate(ex_img, ex_pts, img, params=params)
                        done.append((rec, pts, conf, None))
                    else:
                        cs, sc, conf = cmod.image_candidates(ex_img, ex_pts, img, cparams,
                                                             classical=params)
                        done.append((rec, cs.points[cs.index(cmod.PREVIEW)], conf, cs))
                        scores.append(sc)
                except (LmkError, ValueError, cv2.error) as exc:
                    msg = str(exc)
                    faults.append(msg if rec.name in msg else f"{rec.name}: {msg}")
                    continue
                per_image.append(time.perf_counter() - t0)
                progress(ProgressEvent(stage="classical", epoch=0, epochs=1, step=k + 1,
                                       steps=len(todo), eta_s=clock.eta(k + 1),
                                       message=f"preview {rec.name}"))
            choice = None
            chosen_metrics: dict[str, Any] | None = None
            if cparams is not None and done:
                names = done[0][3].names
                # a handful of new images is too few to decide which landmarks follow the
                # device rather than the anatomy: keep the decision of the newest larger run
                choice = (_earlier_choice(proj, names, cparams.primary)
                          if len(done) < MIN_IMAGES_FOR_CHOICE else None)
                if choice is None:
                    choice = cmod.choose_per_landmark(np.stack(scores), names,
                                                      cparams.primary, cparams.margin)
                chosen_metrics = {
                    "names": choice.names,
                    "chosen_per_landmark": choice.chosen_names(),
                    "landmarks": list(proj.template.names),
                    "gain_over_primary": [[round(float(g), 4) if np.isfinite(g) else None
                                           for g in row] for row in choice.gains]}
            finals = []
            for i, (rec, pts, conf, cs) in enumerate(done):
                if choice is not None:
                    pts, conf = cmod.apply_choice(cs, choice), cmod.choice_confidence(
                        cs, choice, scores[i], conf)
                finals.append((rec, pts, conf))
            fusion_metrics = None
            if src_imgs and done and fparams is not None:
                finals, fusion_metrics = _fuse_sources(
                    proj, done, finals, scores, choice, cparams, params, fparams, ex_id,
                    ex_img, ex_pts, sources, src_imgs, thumbs, progress, cancel, faults)
            for rec, pts, conf in finals:
                history, rows = [], []
                for j in range(n):
                    if not np.isfinite(pts[j]).all():
                        continue
                    lp = LandmarkPoint(j, float(pts[j, 0]), float(pts[j, 1]), Status.PREDICTED,
                                       Source.CLASSICAL, float(conf[j]), None, run_id)
                    history.append((rec.id, lp))
                    confs.append(float(conf[j]))
                proj.record_predictions(run_id, history)
                current = {q.index: q for q in proj.points(rec.id)}   # re-read just before
                for img_id, lp in history:
                    cur = current.get(lp.index)
                    if cur is not None and (cur.status.is_trusted or cur.status is Status.ABSENT):
                        kept += 1
                        continue
                    rows.append((img_id, lp))
                n_set = proj.set_points(rows, keep_human=True)  # re-checked inside the write
                kept += len(rows) - n_set
                written += n_set
        except Cancelled:
            proj.finish_run(run_id, "cancelled", metrics={"points_written": written})
            raise
        except BaseException as exc:
            proj.finish_run(run_id, "failed", metrics={"error": str(exc),
                                                       "points_written": written})
            raise
        proj.finish_run(run_id, "finished",
                        metrics={"images": len(per_image), "points_written": written,
                                 "kept_trusted_or_absent": kept, "faults": faults,
                                 "mean_confidence": float(np.mean(confs)) if confs else None,
                                 "candidates": chosen_metrics, "fusion": fusion_metrics},
                        timings={"total_s": float(sum(per_image)),
                                 "per_image_s": float(np.mean(per_image)) if per_image else None})
        return run_id
    finally:
        if owned:
            proj.close()
