"""Several candidate positions per landmark, a label-free score for each, and a per-landmark choice.

Why: a registration carries every landmark with the anatomy it follows, and that is wrong for a
landmark that sits on something that does not move with the anatomy (on a cephalogram, porion
sits at the cephalostat's ear rods, which hold the ear canal still while the skull tilts), and it
can be wrong where the local flow latches onto the wrong one of two similar edges. No single
propagation is best for every landmark, so each landmark gets a few candidates that fail in
different ways:

- ``unregistered``: the exemplar's point copied (stretched to the target's size): right for
  structures fixed to the imaging device;
- ``affine``: the global alignment alone (the preview's ECC affine, no optical flow);
- ``preview``: the classical preview (ECC affine + DIS flow);
- any others the caller has (Stage I, consensus).

Each candidate also states the local linear map (exemplar -> target) it implies: identity for the
unregistered copy, the affine's linear part for the registered ones. The score is the similarity
of the exemplar's neighbourhood of the landmark with the target's neighbourhood of the candidate,
seen through that map, at several scales (intensity NCC and gradient NCC): a candidate is good when
what surrounds it looks like what surrounds the exemplar's landmark, which holds for a fixed
structure at the unregistered copy and for anatomy at the registered one. The choice never looks
at landmark names: the same rule runs on any template.

Everything is label-free; labels are used only by the benchmark that measures it
(training/bench_candidates.py). numpy + OpenCV only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from lmk_studio.engine import trust

UNREGISTERED = "unregistered"
AFFINE = "affine"
PREVIEW = "preview"


@dataclass
class CandidateSet:
    """Candidates for one target image: names (C,), points (C, N, 2) in target full-resolution
    px (NaN = not offered), linear (C, N, 2, 2) the local exemplar -> target map each implies."""

    names: list[str]
    points: np.ndarray
    linear: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def add(self, name: str, points: np.ndarray, linear: np.ndarray | None = None) -> None:
        """Append a candidate (e.g. Stage I's points); without `linear` it borrows the map of the
        registered candidate (the affine's linear part), as any registration result would."""
        pts = np.asarray(points, dtype=np.float64).reshape(1, -1, 2)
        if linear is None:
            ref = self.index(AFFINE) if AFFINE in self.names else 0
            lin = self.linear[ref:ref + 1].copy()
        else:
            lin = np.broadcast_to(np.asarray(linear, dtype=np.float64),
                                  (pts.shape[1], 2, 2))[None].copy()
        self.names.append(name)
        self.points = np.concatenate([self.points, pts])
        self.linear = np.concatenate([self.linear, lin])


# ---- candidate generation --------------------------------------------------------------------
def stretch_matrix(ex_shape: Sequence[int], tg_shape: Sequence[int]) -> np.ndarray:
    """3x3 map exemplar -> target px for "the same relative position" (pixel-centre convention):
    what "no registration" means when the images differ in size."""
    kx = tg_shape[1] / ex_shape[1]
    ky = tg_shape[0] / ex_shape[0]
    return np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1.0]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def classical_candidates(ex_img: np.ndarray, ex_pts: np.ndarray, img: np.ndarray,
                         params: Any = None) -> tuple[CandidateSet, np.ndarray]:
    """The three candidates one classical preview run yields (unregistered copy, ECC affine
    alone, ECC + DIS flow); returns (candidates, the preview's own confidence (N,))."""
    from lmk_studio.engine.classical import DEFAULT, classical_propagate

    ex_pts = np.asarray(ex_pts, dtype=np.float64).reshape(-1, 2)
    pts, conf, det = classical_propagate(ex_img, ex_pts, img, params=params or DEFAULT,
                                         return_details=True)
    s = stretch_matrix(np.shape(ex_img), np.shape(img))
    unreg = _apply(s, ex_pts)
    n = len(ex_pts)
    lin_u = np.broadcast_to(s[:2, :2], (n, 2, 2))
    lin_a = np.broadcast_to(det["affine_full"][:2, :2], (n, 2, 2))
    cs = CandidateSet([UNREGISTERED, AFFINE, PREVIEW],
                      np.stack([unreg, det["affine_points"], pts]),
                      np.stack([lin_u, lin_a, lin_a]).astype(np.float64),
                      {"ecc_cc": det["ecc_cc"], "affine_full": det["affine_full"]})
    return cs, conf


# ---- scoring ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreParams:
    """Scales are patch half-widths as fractions of the exemplar's long side; every patch is
    sampled on a (2 grid + 1)^2 lattice so each scale costs the same."""

    radii: tuple[float, ...] = (0.01, 0.02, 0.04, 0.08)
    grid: int = 8


def _level(img: np.ndarray, factor: float) -> np.ndarray:
    """The image shrunk by `factor` (<= 1) with area averaging (anti-aliased)."""
    img = np.asarray(img, dtype=np.float32)
    if factor >= 1.0:
        return img
    h, w = img.shape
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _sample_patch(level: np.ndarray, centre: np.ndarray, lin: np.ndarray, g: int) -> np.ndarray:
    """(2g+3)^2 patch of a level image on the lattice centre + lin @ (i, j), i, j in -g-1..g+1
    (level px); one ring more than the patch so gradients can be taken on the patch itself."""
    ij = np.arange(-g - 1, g + 2, dtype=np.float64)
    u, v = np.meshgrid(ij, ij)
    x = centre[0] + lin[0, 0] * u + lin[0, 1] * v
    y = centre[1] + lin[1, 0] * u + lin[1, 1] * v
    return cv2.remap(level, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-9 else 0.0


def _grad(p: np.ndarray) -> np.ndarray:
    gx = 0.5 * (p[1:-1, 2:] - p[1:-1, :-2])
    gy = 0.5 * (p[2:, 1:-1] - p[:-2, 1:-1])
    return np.concatenate([gx.ravel(), gy.ravel()])


def patch_scores(ex_img: np.ndarray, ex_pts: np.ndarray, img: np.ndarray, cands: CandidateSet,
                 params: ScoreParams = ScoreParams()) -> np.ndarray:
    """(C, N, S, 2) similarity of the exemplar's neighbourhood of each landmark to the target's
    neighbourhood of each candidate, through the candidate's own local map, at S scales; the last
    axis is (intensity NCC, gradient NCC). NaN where a point is missing.

    Gradient NCC is kept beside intensity NCC because a thin edge (a bone border) is a small part
    of a patch's intensity variance but most of its gradient energy."""
    ex_pts = np.asarray(ex_pts, dtype=np.float64).reshape(-1, 2)
    c, n = cands.points.shape[:2]
    out = np.full((c, n, len(params.radii), 2), np.nan)
    long_side = max(np.shape(ex_img))
    g = params.grid
    for s, rad in enumerate(params.radii):
        f = min(1.0, g / (rad * long_side))      # level px per full px: the grid spacing is 1
        ex_l, tg_l = _level(ex_img, f), _level(img, f)
        fe = np.array(ex_l.shape[::-1]) / np.array(np.shape(ex_img)[::-1])
        ft = np.array(tg_l.shape[::-1]) / np.array(np.shape(img)[::-1])
        step = 1.0 / f                            # exemplar full px per lattice step
        for j in range(n):
            if not np.isfinite(ex_pts[j]).all():
                continue
            pe = _sample_patch(ex_l, (ex_pts[j] + 0.5) * fe - 0.5,
                               np.diag(fe) * step, g)
            ge = _grad(pe)
            pe = pe[1:-1, 1:-1]
            for k in range(c):
                q = cands.points[k, j]
                if not np.isfinite(q).all():
                    continue
                lin = np.diag(ft) @ cands.linear[k, j] * step
                pt = _sample_patch(tg_l, (q + 0.5) * ft - 0.5, lin, g)
                out[k, j, s, 0] = _ncc(pe, pt[1:-1, 1:-1])
                out[k, j, s, 1] = _ncc(ge, _grad(pt))
    return out


# ---- local search ----------------------------------------------------------------------------
def _region(level: np.ndarray, centre: np.ndarray, lin: np.ndarray, half: int) -> np.ndarray:
    """(2 half + 1)^2 lattice of a level image around centre through lin (level px)."""
    ij = np.arange(-half, half + 1, dtype=np.float64)
    u, v = np.meshgrid(ij, ij)
    x = centre[0] + lin[0, 0] * u + lin[0, 1] * v
    y = centre[1] + lin[1, 0] * u + lin[1, 1] * v
    return cv2.remap(level, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def _grad2(p: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(p, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(p, cv2.CV_32F, 0, 1, ksize=3)
    return np.dstack([gx, gy])


def local_search(ex_img: np.ndarray, ex_pts: np.ndarray, img: np.ndarray, points: np.ndarray,
                 linear: np.ndarray, radius: float, window: float, grid: int = 8,
                 edges: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Move each point to where the exemplar's patch (half-width `radius`, fraction of the
    exemplar's long side) matches best within +-`window` (same units), through the point's local
    map; returns (points (N, 2), best NCC (N,)). Matching is intensity NCC plus, with `edges`,
    gradient NCC (both channels of cv2.matchTemplate's normalised correlation).

    Why: a candidate that is right in kind (it follows the right structure) can still be a few
    pixels off where the structure itself moved a little (the ear canal slides on the rod; the
    flow's smoothing rounds a corner); a bounded search keeps it on the structure it chose."""
    ex_pts = np.asarray(ex_pts, dtype=np.float64).reshape(-1, 2)
    out = np.array(points, dtype=np.float64)
    best = np.full(len(out), np.nan)
    long_side = max(np.shape(ex_img))
    f = min(1.0, grid / (radius * long_side))
    step = 1.0 / f
    ex_l, tg_l = _level(ex_img, f), _level(img, f)
    fe = np.array(ex_l.shape[::-1]) / np.array(np.shape(ex_img)[::-1])
    ft = np.array(tg_l.shape[::-1]) / np.array(np.shape(img)[::-1])
    wl = max(1, round(window * long_side * f))
    for j in range(len(out)):
        if not (np.isfinite(ex_pts[j]).all() and np.isfinite(out[j]).all()):
            continue
        lin_l = np.diag(ft) @ linear[j] * step
        te = _region(ex_l, (ex_pts[j] + 0.5) * fe - 0.5, np.diag(fe) * step, grid + 1)
        tr = _region(tg_l, (out[j] + 0.5) * ft - 0.5, lin_l, grid + 1 + wl)
        r = cv2.matchTemplate(tr[1:-1, 1:-1], te[1:-1, 1:-1], cv2.TM_CCOEFF_NORMED)
        if edges:
            r = 0.5 * (r + cv2.matchTemplate(_grad2(tr)[1:-1, 1:-1], _grad2(te)[1:-1, 1:-1],
                                             cv2.TM_CCOEFF_NORMED))
        iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
        du = np.array([ix - wl, iy - wl], dtype=np.float64)
        out[j] = out[j] + (linear[j] * step) @ du
        best[j] = float(r[iy, ix])
    return out, best


def add_search_variants(ex_img: np.ndarray, ex_pts: np.ndarray, img: np.ndarray,
                        cands: CandidateSet, radius: float, window: float,
                        grid: int = 8) -> CandidateSet:
    """Every candidate gets a "<name>+search" twin: the same point after local_search through
    the same local map (so a fixed structure stays searched without anatomy's rotation)."""
    for name in list(cands.names):
        k = cands.index(name)
        pts, _ = local_search(ex_img, ex_pts, img, cands.points[k], cands.linear[k], radius,
                              window, grid)
        cands.add(f"{name}+search", pts, cands.linear[k])
    return cands


# ---- selection -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateParams:
    """Knobs of the candidate choice (chosen on Hamedan images 002-060 only, reported on 061-120:
    training/reports/candidates.md). Lengths are fractions of the exemplar's long side."""

    score_radii: tuple[float, ...] = (0.01, 0.02)   # scales of the choice's similarity score
    grid: int = 8
    search_radius: float = 0.005     # patch half-width of the local search (about 8 px here)
    search_window: float = 0.005     # how far the search may move a point
    margin: float = 0.05             # folder-mean score gain a candidate needs over the primary
    primary: str = PREVIEW           # the answer kept unless another wins by the margin


DEFAULT_CANDIDATES = CandidateParams()


def candidate_scores(ex_img: np.ndarray, ex_pts: np.ndarray, img: np.ndarray,
                     cands: CandidateSet, params: CandidateParams = DEFAULT_CANDIDATES
                     ) -> np.ndarray:
    """(C, N) label-free score: intensity and gradient NCC averaged over params.score_radii.

    The radii are larger than the search patch, so a searched twin is not judged on the very
    quantity it maximised."""
    s = patch_scores(ex_img, ex_pts, img, cands, ScoreParams(params.score_radii, params.grid))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(s.reshape(*s.shape[:2], -1), axis=-1)


def image_candidates(ex_img: np.ndarray, ex_pts: np.ndarray, img: np.ndarray,
                     params: CandidateParams = DEFAULT_CANDIDATES,
                     extra: dict[str, np.ndarray] | None = None, classical: Any = None
                     ) -> tuple[CandidateSet, np.ndarray, np.ndarray]:
    """One target image end to end: the classical candidates, `extra` ones (name -> (N, 2),
    e.g. Stage I's points), their searched twins, and the scores; returns (candidates, scores
    (C, N), the preview's confidence (N,))."""
    cands, conf = classical_candidates(ex_img, ex_pts, img, classical)
    for name, pts in (extra or {}).items():
        cands.add(name, pts)
    add_search_variants(ex_img, ex_pts, img, cands, params.search_radius, params.search_window,
                        params.grid)
    return cands, candidate_scores(ex_img, ex_pts, img, cands, params), conf


@dataclass
class Choice:
    """Per landmark: the winning candidate's index into names and its folder-mean gain (score
    minus the primary's); gains (C, N) for the record."""

    names: list[str]
    chosen: np.ndarray
    gains: np.ndarray
    primary: str = PREVIEW
    #: (C, N) folder median of each candidate's score (None when the choice was given, not
    #: decided on a folder): engine.trust reads the systematic part of the score from it
    folder_score: np.ndarray | None = None

    def chosen_names(self) -> list[str]:
        return [self.names[int(k)] for k in self.chosen]


def choose_per_landmark(scores: np.ndarray, names: Sequence[str], primary: str = PREVIEW,
                        margin: float = DEFAULT_CANDIDATES.margin) -> Choice:
    """scores (M, C, N) over the M target images of a folder. Per landmark, the candidate whose
    mean score gain over the primary is largest wins if that gain exceeds `margin`; otherwise
    the primary stays.

    Why per landmark over the folder, not per image: whether a landmark follows the anatomy or
    a fixed device is a property of the landmark and the setup, the same in every image, while a
    single image's score difference is noisy (measured: per-image choices were worse than the
    preview alone on Hamedan). Landmark names are never used."""
    sc = np.asarray(scores, dtype=np.float64)
    if sc.ndim == 2:
        sc = sc[None]
    p = list(names).index(primary)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gains = np.nanmean(sc - sc[:, p:p + 1], axis=0)          # (C, N)
        folder = np.nanmedian(sc, axis=0) if len(sc) >= trust.MIN_FOLDER else None
    gains = np.where(np.isfinite(gains), gains, -np.inf)
    gains[p] = 0.0
    adj = gains - margin
    adj[p] = 0.0
    return Choice(list(names), np.argmax(adj, axis=0), gains, primary, folder)


def apply_choice(cands: CandidateSet, choice: Choice) -> np.ndarray:
    """(N, 2) the chosen candidate's point per landmark; where it is missing (NaN), the
    primary's."""
    out = cands.points[cands.index(choice.primary)].copy()
    for j, k in enumerate(choice.chosen):
        q = cands.points[cands.index(choice.names[int(k)]), j]
        if np.isfinite(q).all():
            out[j] = q
    return out


def _twin(names: Sequence[str], name: str) -> str | None:
    """The other half of a candidate's (point, searched point) pair, if there is one."""
    other = name[:-len("+search")] if name.endswith("+search") else f"{name}+search"
    return other if other in names else None


def trust_features(cands: CandidateSet, choice: Choice, scores: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 3), their folder medians (N, 3), NaN = unknown) of the chosen points, for
    engine.trust: distance to the searched (or unsearched) twin, the residual under the
    exemplar's shape (the unregistered candidate is an affine image of the exemplar's points, so
    it serves as the shape reference without the exemplar itself), the patch score."""
    pts = apply_choice(cands, choice)
    n = pts.shape[0]
    twin = pts.copy()
    score = np.full(n, np.nan)
    fscore = np.full(n, np.nan)
    for j, k in enumerate(choice.chosen):
        name = choice.names[int(k)]
        if not np.isfinite(cands.points[cands.index(name), j]).all():
            name = choice.primary
        t = _twin(cands.names, name)
        if t is not None and np.isfinite(cands.points[cands.index(t), j]).all():
            twin[j] = cands.points[cands.index(t), j]
        score[j] = scores[cands.index(name), j]
        if choice.folder_score is not None and name in choice.names:
            fscore[j] = choice.folder_score[choice.names.index(name), j]
    ref = (cands.points[cands.index(UNREGISTERED)] if UNREGISTERED in cands.names
           else cands.points[0])
    feats = trust.features(pts, twin, score, ref[None])
    folder = np.full_like(feats, np.nan)
    folder[:, 2] = np.log(1.05 - np.clip(fscore, -1.0, 1.0))
    return feats, folder


def choice_expected_error(cands: CandidateSet, choice: Choice, scores: np.ndarray
                          ) -> np.ndarray:
    """(N,) expected error px of the chosen points from one image (engine.trust.IMAGE_MODEL:
    the folder enters through the choice's folder scores only)."""
    feats, folder = trust_features(cands, choice, scores)
    return trust.expected_error(feats, folder, trust.IMAGE_MODEL)


def folder_expected_error(sets: Sequence[CandidateSet], choice: Choice,
                          scores: Sequence[np.ndarray]) -> np.ndarray:
    """(M, N) expected error px of the chosen points over a folder (engine.trust.FOLDER_MODEL:
    the folder medians of every signal carry the systematic part). With fewer than
    trust.MIN_FOLDER images it is the per-image estimate."""
    fs = [trust_features(cs, choice, sc) for cs, sc in zip(sets, scores, strict=True)]
    if not fs:
        return np.zeros((0, 0))
    feats = np.stack([f for f, _ in fs])
    folder = trust.folder_medians(feats)
    if len(fs) < trust.MIN_FOLDER:
        return np.stack([trust.expected_error(f, g, trust.IMAGE_MODEL) for f, g in fs])
    return trust.expected_error(feats, folder, trust.FOLDER_MODEL)


def choice_confidence(cands: CandidateSet, choice: Choice, scores: np.ndarray,
                      primary_conf: np.ndarray, tol_px: float = trust.DEFAULT_TOL_PX
                      ) -> np.ndarray:
    """(N,) confidence of the chosen points: engine.trust's map of their expected error
    (choice_expected_error; 0.5 at `tol_px`), so that a landmark matching the exemplar poorly
    on every image, or sitting far from where its image's other points put it, reads low even
    when the registration agrees with itself. Where no expected error can be formed (a missing
    point or feature) the engine's own confidence (`primary_conf`, or the winner's clipped
    score for a non-primary candidate) is kept.

    The expected error itself is engine.trust.expected_from_confidence(conf, tol_px): the
    preview's job writes confidence only."""
    out = np.asarray(primary_conf, dtype=np.float64).copy()
    for j, k in enumerate(choice.chosen):
        name = choice.names[int(k)]
        if name in (choice.primary, f"{choice.primary}+search"):
            continue
        v = scores[cands.index(name), j]
        out[j] = float(np.clip(v, 0.0, 1.0)) if np.isfinite(v) else 0.0
    e = choice_expected_error(cands, choice, scores)
    ok = np.isfinite(e)
    out[ok] = trust.confidence_from_expected(e[ok], tol_px)
    return out
