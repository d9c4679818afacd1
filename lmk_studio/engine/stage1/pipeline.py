"""Stage I end to end on arrays: start points (learned coarse pass or the classical result),
optional learned refinement on landmark crops, per-landmark confidence. Store-free, so the job,
the benchmark and the tests share it."""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from lmk_studio.core.errors import LmkError
from lmk_studio.engine import checkpoints
from lmk_studio.engine.common import (
    CancelToken,
    EtaClock,
    ProgressCallback,
    ProgressEvent,
    no_progress,
)
from lmk_studio.engine.patches import patch_at

from .config import PassConfig, Stage1Config
from .trainer import PassData, PassTrainer, downscale, full_to_small, resize_to, small_to_full


@dataclass
class Stage1Result:
    points: np.ndarray                       # (M, N, 2) full-res px (exemplar row = its labels)
    confidence: np.ndarray                   # (M, N) in [0, 1]
    step_disagreement_px: np.ndarray         # (M, N) full px between the train-depth and final step
    start_points: np.ndarray | None = None   # what the refinement started from
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    history: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)


def ecc_globals(images: list[np.ndarray], ex: int) -> dict[int, np.ndarray]:
    """Classical global step (the paper's 'sift' row): ECC affine per image, as a normalised
    2x3 matrix mapping the image's coordinates to the exemplar's."""
    out = {}
    a = images[ex]
    h, w = a.shape
    n = np.array([[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]])
    for k, b in enumerate(images):
        warp = np.eye(2, 3, dtype=np.float32)
        if k != ex:
            try:
                _, warp = cv2.findTransformECC(a, b, warp, cv2.MOTION_AFFINE,
                                               (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT,
                                                100, 1e-5), None, 5)
            except cv2.error:
                warp = np.eye(2, 3, dtype=np.float32)
        t = n @ np.vstack([warp, [0, 0, 1]]) @ np.linalg.inv(n)     # exemplar -> image k
        out[k] = np.linalg.inv(t)[:2].astype(np.float32)
    return out


def classical_start(full: list[np.ndarray], ex: int, ex_pts: np.ndarray,
                    cancel: CancelToken | None = None) -> tuple[np.ndarray, str]:
    """The classical preview (engine.classical) as the refinement's starting point."""
    from lmk_studio.engine.classical import classical_propagate

    pts = np.full((len(full), *ex_pts.shape), np.nan)
    for k, img in enumerate(full):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if k == ex:
            pts[k] = ex_pts
            continue
        out = classical_propagate(full[ex], ex_pts, img)
        pts[k] = out[0] if isinstance(out, tuple) else out
    return pts, "engine.classical.classical_propagate"


def _fill_missing_starts(full: list[np.ndarray], ex: int, ex_pts: np.ndarray, pts: np.ndarray,
                         cancel: CancelToken | None, notes: list[str]) -> np.ndarray:
    """Images without stored classical points (e.g. added after the preview ran) get them now,
    so every image has a start for the refinement."""
    lab = np.isfinite(ex_pts).all(-1)
    need = [k for k in range(len(full))
            if k != ex and not np.isfinite(pts[k][lab]).all()]
    if not need:
        return pts
    try:
        from lmk_studio.engine.classical import classical_propagate
    except ImportError:
        notes.append(f"{len(need)} image(s) have no classical start and engine.classical is "
                     "not available: they get no Stage I points")
        return pts
    for k in need:
        if cancel is not None:
            cancel.raise_if_cancelled()
        out = classical_propagate(full[ex], ex_pts, full[k])
        new = out[0] if isinstance(out, tuple) else out
        miss = ~np.isfinite(pts[k]).all(-1)
        pts[k][miss] = np.asarray(new)[miss]
    notes.append(f"classical start computed for {len(need)} image(s) without a stored preview")
    return pts


def neighbours(full: list[np.ndarray], ex: int, k: int) -> dict[int, list[int]]:
    """For every non-exemplar image, its k most similar other non-exemplar images (L2 between
    contrast-normalised 80x64 thumbnails: the cephalostat / scanner already roughly aligns
    them, and the choice only has to prefer look-alikes)."""
    th = np.stack([cv2.resize(im.astype(np.float32), (64, 80), interpolation=cv2.INTER_AREA)
                   .ravel() for im in full])
    th = (th - th.mean(1, keepdims=True)) / np.maximum(th.std(1, keepdims=True), 1e-6)
    d = ((th[:, None] - th[None]) ** 2).sum(-1)
    d[:, ex] = np.inf
    np.fill_diagonal(d, np.inf)
    return {t: [int(x) for x in np.argsort(d[t])[:k] if np.isfinite(d[t, x])]
            for t in range(len(full)) if t != ex}


def transitive_consensus(full: list[np.ndarray], ex: int, pts: np.ndarray, k: int,
                         hop, progress: ProgressCallback = no_progress,
                         cancel: CancelToken | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each image's points = per-coordinate median of the direct estimate and the estimates
    carried exemplar -> neighbour -> image through its k most similar images (`hop(s, t, p_s,
    p_t)` registers image s to t). A one-off failure of the direct path is outvoted; the spread
    of the estimates (median absolute deviation, px) says how much the paths disagree.

    Uses only the exemplar's labels and the unlabelled folder (the paper's pseudo-landmark EMA
    also pools estimates across the folder)."""
    m, n = pts.shape[:2]
    nb = neighbours(full, ex, k)
    out = pts.copy()
    spread = np.zeros((m, n))
    clock = EtaClock(len(nb))
    for step, (t, srcs) in enumerate(sorted(nb.items()), 1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        est = [pts[t]]
        for s_ in srcs:
            est.append(np.asarray(hop(s_, t, pts[s_], pts[t]), dtype=np.float64))
        e = np.stack(est)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(e, axis=0)
            spread[t] = np.nanmedian(np.linalg.norm(e - med, axis=-1), axis=0)
        ok = np.isfinite(med).all(-1)
        out[t][ok] = med[ok]
        progress(ProgressEvent(stage="stage1-consensus", epoch=0, epochs=1, step=step,
                               steps=len(nb), eta_s=clock.eta(step),
                               message=f"consensus through {len(srcs)} similar images"))
    spread[ex] = 0.0
    return out, np.nan_to_num(spread, nan=0.0)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 1e-9 else 0.0




def confidence(full_small: list[np.ndarray], scale: float, ex: int, ex_pts: np.ndarray,
               pts: np.ndarray, disagreement: np.ndarray, radius: int = 12,
               tol_px: float = 8.0) -> np.ndarray:
    """Per landmark: local NCC of exemplar vs target patch (at 1/scale) x agreement of the
    train-depth and final local steps (exp(-d / tol))."""
    conf = np.zeros(pts.shape[:2])
    e_s = (ex_pts + 0.5) / scale - 0.5
    for k, img in enumerate(full_small):
        for j in range(pts.shape[1]):
            if k == ex or not np.isfinite(pts[k, j]).all():
                conf[k, j] = 1.0 if k == ex else 0.0
                continue
            p = (pts[k, j] + 0.5) / scale - 0.5
            ncc = _ncc(patch_at(full_small[ex], e_s[j], radius), patch_at(img, p, radius))
            d = disagreement[k, j] if np.isfinite(disagreement[k, j]) else tol_px
            conf[k, j] = max(0.0, ncc) * float(np.exp(-d / tol_px))
    return conf


def choose_candidates(full: list[np.ndarray], ex: int, ex_pts: np.ndarray, pts: np.ndarray,
                      conf: np.ndarray, opts: dict, cancel: CancelToken | None = None,
                      given: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Stage I's answer as the primary among engine.candidates' candidates (the exemplar's
    point copied, the ECC affine alone, the classical preview, each also after a local search),
    one kind chosen per landmark over the folder, label-free.

    Why: Stage I refines a registration, so a landmark on a structure that does not move with the
    anatomy (porion at a cephalostat's ear rods) stays wrong however well it is refined; the
    choice keeps Stage I wherever nothing beats it clearly. Returns (points, confidence, record:
    candidate names and the winner per landmark).

    `given`: the record of an earlier choice (the training run's), applied as it is: predicting
    a few new images must not re-decide per landmark on those few."""
    from lmk_studio.engine import candidates as cm

    params = cm.CandidateParams(**{k: (tuple(v) if k == "score_radii" else v)
                                   for k, v in opts.items() if k != "on"}, primary="stage1")
    targets = [k for k in range(len(full)) if k != ex]
    sets, scores = [], []
    for k in targets:
        if cancel is not None:
            cancel.raise_if_cancelled()
        cs, sc, _ = cm.image_candidates(full[ex], ex_pts, full[k], params,
                                        extra={"stage1": pts[k]})
        sets.append(cs)
        scores.append(sc)
    if not sets:
        return pts, conf, {}
    ch = None
    if given and list(given.get("names") or []) == list(sets[0].names):
        try:
            idx = np.array([sets[0].names.index(c) for c in given["chosen_per_landmark"]])
            if len(idx) == pts.shape[1]:
                ch = cm.Choice(list(sets[0].names), idx, np.zeros((len(sets[0].names),
                                                                   len(idx))), params.primary)
        except (KeyError, ValueError, TypeError):
            ch = None
    if ch is None:
        ch = cm.choose_per_landmark(np.stack(scores), sets[0].names, params.primary,
                                    params.margin)
    out, conf = pts.copy(), conf.copy()
    for k, cs, sc in zip(targets, sets, scores, strict=True):
        out[k] = cm.apply_choice(cs, ch)
        conf[k] = cm.choice_confidence(cs, ch, sc, conf[k])
    return out, conf, {"names": ch.names, "chosen_per_landmark": ch.chosen_names()}


def _predict_per_landmark(tr: PassTrainer, targets: list[int]):
    """Crop predictions; with per-landmark selection each landmark comes from its own state."""
    groups = tr.landmark_states()
    if not groups or not tr.lm_states:
        return tr.predict(targets)
    keep = copy.deepcopy(tr.net.state_dict())
    pred = steps = None
    for e, lms in sorted(groups.items()):
        tr.net.load_state_dict(tr.lm_states[e])
        p, st = tr.predict(targets)
        if pred is None:
            pred, steps = p.copy(), {k: v.copy() for k, v in st.items()}
        pred[:, lms] = p[:, lms]
        for k in steps:
            steps[k][:, lms] = st[k][:, lms]
    tr.net.load_state_dict(keep)
    return pred, steps


def _classical_hop(full: list[np.ndarray]):
    from lmk_studio.engine.classical import classical_propagate

    def hop(s: int, t: int, ps: np.ndarray, _pt: np.ndarray) -> np.ndarray:
        out = classical_propagate(full[s], ps, full[t])
        return out[0] if isinstance(out, tuple) else out
    return hop


def _refine_hop(tr: PassTrainer, scale: float):
    def hop(s: int, t: int, ps: np.ndarray, pt: np.ndarray) -> np.ndarray:
        q = tr.register_crops(s, (ps + 0.5) / scale - 0.5, t, (pt + 0.5) / scale - 0.5)
        return (q + 0.5) * scale - 0.5
    return hop


def _pass(cfg: PassConfig, data: PassData, mode: str, seed: int, device, progress, cancel,
          ckpt: Path | None, resume: bool, stage: str, given=None,
          init: str | None = None) -> PassTrainer:
    tr = PassTrainer(cfg, data, mode, seed, device, stage, given)
    if init is not None:
        saved = checkpoints.load(init)
        try:
            tr.net.load_state_dict(saved["state"])
            if saved.get("landmark_states"):
                tr.lm_states = dict(saved["landmark_states"]["states"])
                tr.lm_best_epoch = np.asarray(saved["landmark_states"]["epochs"], dtype=int)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise LmkError(f"{init}: not a Stage I {mode} model of this preset "
                           f"({type(exc).__name__}: {str(exc)[:200]}); train Stage I again"
                           ) from None
    if tr.net.pretrained_note:
        progress(ProgressEvent(stage=stage, epoch=0, epochs=cfg.epochs, step=0,
                               steps=cfg.steps_per_epoch, message=tr.net.pretrained_note))
    tr.fit(progress, cancel, ckpt, resume)
    return tr


def fit_stage1(full: list[np.ndarray], ex: int, ex_pts: np.ndarray, cfg: Stage1Config,
               seed: int = 0, device: torch.device | str = "cpu",
               progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
               checkpoint_dir: Path | None = None, resume: bool = False,
               start_points: np.ndarray | None = None,
               init_models: dict | None = None, given_choice: dict | None = None
               ) -> Stage1Result:
    """full: float32 images in [0, 1] at full resolution (or any common resolution)."""
    t0 = time.monotonic()
    torch.set_num_threads(max(1, min(cfg.torch_threads, torch.get_num_threads())))
    n = ex_pts.shape[0]
    m = len(full)
    notes: list[str] = []
    timings: dict[str, float] = {}
    history: dict[str, list] = {}
    models: dict[str, object] = {}
    known = np.zeros(m, dtype=bool)
    known[ex] = True
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        steps_final = np.full((m, n, 2), np.nan)
        steps_train = np.full((m, n, 2), np.nan)
        if cfg.start == "classical" and start_points is None:
            try:
                start_points, src = classical_start(full, ex, ex_pts, cancel)
                notes.append(f"refinement starts from {src}")
            except ImportError:
                notes.append("engine.classical is not available: the learned coarse pass is "
                             "used as the start instead")
        if start_points is not None:
            pts = np.array(start_points, dtype=np.float64)
            pts[ex] = ex_pts
            if cfg.start == "classical":
                pts = _fill_missing_starts(full, ex, ex_pts, pts, cancel, notes)
            timings["start_s"] = time.monotonic() - t0
        else:
            c = cfg.coarse
            if c is None:
                raise ValueError("no start points and no coarse pass configured")
            t1 = time.monotonic()
            small = [resize_to(im, c.size) for im in full]
            hw = [im.shape for im in full]
            p_small = np.full((m, n, 2), np.nan)
            p_small[ex] = full_to_small(ex_pts, hw[ex], c.size)
            given = ecc_globals(small, ex) if c.global_type == "classical" else None
            tr = _pass(c, PassData(small, p_small, known, ex), "whole", seed, device, progress,
                       cancel, checkpoint_dir / "coarse.pt" if checkpoint_dir else None, resume,
                       "stage1-coarse", given, (init_models or {}).get("coarse"))
            targets = [k for k in range(m) if k != ex]
            pred, steps = tr.predict(targets)
            pts = np.full((m, n, 2), np.nan)
            pts[ex] = ex_pts
            for k in targets:
                pts[k] = small_to_full(pred[k], hw[k], c.size)
                steps_final[k] = pts[k]
                steps_train[k] = small_to_full(steps[k][min(c.n_local_train, len(steps[k]) - 1)],
                                               hw[k], c.size)
            notes.append(tr.net.pretrained_note)
            history["coarse"] = tr.history
            models["coarse"] = tr.net
            timings["coarse_s"] = time.monotonic() - t1
        k_cons = int(cfg.consensus.get("k", 0))
        when = cfg.consensus.get("when", "start")
        via = cfg.consensus.get("via", "classical")
        spread = None
        if k_cons > 0 and when == "start":
            t1 = time.monotonic()
            pts, spread = transitive_consensus(full, ex, pts, k_cons, _classical_hop(full),
                                               progress, cancel)
            timings["consensus_s"] = time.monotonic() - t1
            notes.append(f"start points: median over the direct path and {k_cons} "
                         "neighbour paths (classical flow)")
        start = pts.copy()
        r = cfg.refine
        tr_ref = None
        conf_scale = cfg.coarse.scale if cfg.coarse is not None else 4.0
        if r is not None:
            t1 = time.monotonic()
            conf_scale = r.scale
            small = [downscale(im, r.scale) for im in full]
            p_small = np.stack([(pts[k] + 0.5) / r.scale - 0.5 for k in range(m)])
            tr = _pass(r, PassData(small, p_small, known, ex), "crop", seed + 1, device, progress,
                       cancel, checkpoint_dir / "refine.pt" if checkpoint_dir else None, resume,
                       "stage1-refine", None, (init_models or {}).get("refine"))
            # predict from the ORIGINAL start (the EMA points were the training state)
            tr.ema = p_small.copy()
            targets = [k for k in range(m) if k != ex]
            if r.tta_steps > 0:
                t2 = time.monotonic()
                pred, steps = tr.adapt_predict(targets, progress, cancel)
                timings["adapt_s"] = time.monotonic() - t2
                ch = tr.tta_choice[targets]
                ch = ch[ch > -2]
                history["refine_adapt_choice"] = {
                    "start": int((ch == -1).sum()),
                    "adapted": int((ch >= 0).sum())}
                notes.append(f"test-time adaptation: {r.tta_steps} steps per target "
                             f"(select {r.tta_select}); {int((ch >= 0).sum())} of {ch.size} "
                             "points moved, the rest kept at their start")
            else:
                pred, steps = _predict_per_landmark(tr, targets)
            for k in targets:
                pts[k] = (pred[k] + 0.5) * r.scale - 0.5
                steps_final[k] = pts[k]
                # adaptation: [previous local step, final]; otherwise train depth vs final
                i_tr = 0 if r.tta_steps > 0 else min(r.n_local_train, len(steps[k]) - 1)
                steps_train[k] = (steps[k][i_tr] + 0.5) * r.scale - 0.5
            notes.append(tr.net.pretrained_note)
            history["refine"] = tr.history
            models["refine"] = tr.net
            groups = tr.landmark_states()
            if groups is not None:
                models["refine_landmark_states"] = {"states": tr.lm_states,
                                                    "epochs": tr.lm_best_epoch.tolist()}
                history["refine_landmark_epochs"] = tr.lm_best_epoch.tolist()
                notes.append("refinement: each landmark uses the state with its lowest held-out "
                             "label-free loss (epochs " + ", ".join(
                                 f"{e}: {len(v)} landmark(s)" for e, v in sorted(groups.items()))
                             + "; epoch 0 = left at its start)")
            timings["refine_s"] = time.monotonic() - t1
            tr_ref = tr
        if k_cons > 0 and when == "final":
            t1 = time.monotonic()
            if via == "refine" and tr_ref is not None:
                hop = _refine_hop(tr_ref, r.scale)
            else:
                hop = _classical_hop(full)
            pts, spread = transitive_consensus(full, ex, pts, k_cons, hop, progress, cancel)
            pts[ex] = ex_pts
            timings["consensus_s"] = time.monotonic() - t1
            notes.append(f"final points: median over the direct path and {k_cons} neighbour "
                         f"paths ({'learned refinement' if via == 'refine' else 'classical'})")
        dis = np.linalg.norm(steps_final - steps_train, axis=-1)
        small = [downscale(im, conf_scale) for im in full]
        conf = confidence(small, conf_scale, ex, ex_pts, pts, dis, tol_px=2 * conf_scale)
        if spread is not None:
            # paths that disagree = a point to review first
            conf = conf * np.exp(-spread / (4 * conf_scale))
        if cfg.candidates.get("on", bool(cfg.candidates)):
            t1 = time.monotonic()
            pts, conf, history["candidates"] = choose_candidates(
                full, ex, ex_pts, pts, conf, cfg.candidates, cancel, given_choice)
            timings["candidates_s"] = time.monotonic() - t1
            off = [f"{j + 1}: {c}" for j, c in
                   enumerate(history["candidates"].get("chosen_per_landmark", []))
                   if c != "stage1"]
            notes.append("candidate choice per landmark: " + (", ".join(off) if off else
                                                               "Stage I kept everywhere"))
        timings["total_s"] = time.monotonic() - t0
        return Stage1Result(pts, conf, dis, start, timings, [x for x in notes if x], history,
                            models)
    finally:
        torch.use_deterministic_algorithms(det)


def predict_with_models(full: list[np.ndarray], ex: int, ex_pts: np.ndarray, cfg: Stage1Config,
                        model_paths: dict, device, start_points: np.ndarray | None = None,
                        progress: ProgressCallback = no_progress,
                        cancel: CancelToken | None = None,
                        given_choice: dict | None = None) -> Stage1Result:
    """Inference only: the saved pass models, zero training epochs."""
    d = cfg.to_dict()
    for k in ("coarse", "refine"):
        if d[k] is not None:
            d[k]["epochs"] = 0
    c0 = Stage1Config.from_dict(d)
    return fit_stage1(full, ex, ex_pts, c0, 0, device, progress, cancel, None, False,
                      start_points, {k: v for k, v in model_paths.items()
                                     if k in ("coarse", "refine")}, given_choice)
