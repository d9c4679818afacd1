"""Stage II jobs on a project store: train (C2T) and predict, results written as Source.STAGE2.

Start points (pseudo-labels) come from the newest finished Stage I run, else the newest classical
preview run, else the points currently in the project that no human stands behind. Trusted
points (exemplar, accepted, corrected) are the labelled set and are never overwritten; neither is
a point the user marked absent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from lmk_studio.core.errors import LmkError
from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.engine import checkpoints, runs
from lmk_studio.engine.checkpoints import model_dir
from lmk_studio.engine.common import (
    Cancelled,
    CancelToken,
    ProgressCallback,
    ProgressEvent,
    no_progress,
    seed_everything,
    select_device,
)

from .confidence import score
from .config import load_preset
from .model import Stage2Model
from .pipeline import fit_stage2, tolerance_px
from .trainer import Stage2Data, downscale

RUN_KIND = "stage2"
_START_KINDS = (("stage1",), ("classical", "preview", "stage0"))


def _open(project: Any):
    """Accept an open Project or a path to one (then we own closing it)."""
    if isinstance(project, str | Path):
        from lmk_studio.core.store import Project

        return Project.open(Path(project)), True
    return project, False


def _start_points(project, image_ids: Sequence[int], n: int) -> tuple[dict[int, np.ndarray], str]:
    """Per image: the newest Stage I points (training run or a later Stage I prediction), else
    the newest classical preview, else the image's current points that no human stands behind.
    Images with none of these get all-NaN points.

    A preview newer than the image's Stage I points wins: after corrections the fused preview
    (engine.fusion, every trusted image an exemplar) is re-derived, and a Stage I from before
    them must not hide it (the chain re-trains Stage I on it; Stage II alone takes it as is)."""
    out, src = runs.latest_points(project, image_ids, n, runs.STAGE1_KINDS)
    pre, src2 = runs.latest_points(project, image_ids, n, runs.CLASSICAL_KINDS)
    for iid, rid in src2.items():
        if iid not in out or rid > src[iid]:
            out[iid], src[iid] = pre[iid], rid
    current = 0
    for iid in image_ids:
        if iid in out:
            continue
        arr = np.full((n, 2), np.nan)
        for p in project.points(iid):
            if p.placed and p.x is not None and p.y is not None and not p.status.is_trusted:
                arr[p.index] = (p.x, p.y)
        if np.isfinite(arr).any():
            current += 1
        out[iid] = arr
    words = runs.describe_sources(src, project)
    if current:
        words += f"; current points: {current} image(s)"
    return out, words


def _reviewed_pairs(project, all_pts: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(expected, actual) error px of the newest finished Stage II run's points that the user
    has accepted or corrected since: actual = how far the human moved the point (0 if accepted
    as is). A point trusted before that run has no prediction in it, so it is not counted."""
    for r in sorted(project.runs(), key=lambda r: r.id, reverse=True):
        if r.kind != RUN_KIND or r.status != "finished":
            continue
        exp, act = [], []
        for iid, preds in project.predictions(r.id).items():
            now = {p.index: p for p in all_pts.get(iid, [])}
            for p in preds:
                h = now.get(p.index)
                if (h is None or not h.status.is_trusted or not h.placed or p.x is None
                        or p.y is None or p.expected_error_px is None):
                    continue
                exp.append(float(p.expected_error_px))
                act.append(float(np.hypot(h.x - p.x, h.y - p.y)))
        return np.array(exp), np.array(act)
    return None


def _load_levels(path: Path, cfg) -> tuple[np.ndarray, tuple[float, float],
                                             np.ndarray | None, tuple[float, float] | None]:
    """The image at the fine level's scale and (cascade) the coarse one; full res is dropped."""
    from lmk_studio.core.images import load_image

    img = runs.check_engine_image(load_image(path).normalized(), Path(path).name)
    down, f = downscale(img, cfg.scale)
    ccfg = cfg.coarse_config()
    if ccfg is None:
        return down, f, None, None
    cdown, cf = downscale(img, ccfg.scale)
    return down, f, cdown, cf


def train_stage2_job(project: Any, preset: str | None = "cpu", device: str = "auto",
                     resume: bool = False, seed: int | None = None,
                     progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None) -> int:
    """Train C2T on the project, write predictions + confidence, return the run id."""
    proj, owned = _open(project)
    try:
        return _train(proj, preset, device, resume, seed, progress, cancel)
    finally:
        if owned:
            proj.close()


def _train(proj, preset, device, resume, seed, progress, cancel) -> int:
    cfg = load_preset(preset)
    dev = select_device(device)
    seed = 0 if seed is None else int(seed)
    seed_everything(seed)
    n = len(proj.template)
    records = proj.images()
    if not records:
        raise LmkError(f"{proj.path}: the project has no images")
    all_pts = proj.all_points()
    ids = [r.id for r in records]
    starts, start_src = _start_points(proj, ids, n)

    prev_ckpt = None
    if resume:
        for r in sorted(proj.runs(), key=lambda r: r.id, reverse=True):
            if r.kind == RUN_KIND and r.status in ("cancelled", "running", "failed"):
                c = (r.checkpoints or {}).get("trainer")
                if c:
                    f = checkpoints.resolve(proj, c, f"trainer checkpoint of run {r.id}")
                    prev_ckpt = f if f.is_file() else None
                break
    run_id = proj.start_run(RUN_KIND, {"preset": cfg.name, "stage2": cfg.to_dict(), "seed": seed,
                                       "device": str(dev), "start_points": start_src,
                                       "resumed_from": (checkpoints.to_stored(proj, prev_ckpt)
                                                        if prev_ckpt else None)})
    ckpt = prev_ckpt or (model_dir(proj) / f"stage2_run{run_id}" / "trainer.pt")
    ck_stored = checkpoints.to_stored(proj, ckpt)
    try:
        images, factors, points, trusted, faults, used = [], [], [], [], [], []
        cimages, cfactors = [], []
        for k, rec in enumerate(records):
            if cancel is not None:
                cancel.raise_if_cancelled()
            try:
                down, f, cdown, cf = _load_levels(rec.path, cfg)
            except LmkError as exc:
                faults.append(str(exc))
                continue
            cimages.append(cdown)
            cfactors.append(cf)
            pts = np.full((n, 2), np.nan)
            tr = np.zeros(n, dtype=bool)
            for p in all_pts.get(rec.id, []):
                if p.status.is_trusted and p.placed:
                    pts[p.index] = (p.x, p.y)
                    tr[p.index] = True
            s = starts.get(rec.id)
            if s is not None:
                pts = np.where(tr[:, None], pts, s)
            images.append(down)
            factors.append(f)
            points.append(pts)
            trusted.append(tr)
            used.append(rec)
            progress(ProgressEvent(stage="stage2-load", epoch=0, epochs=1, step=k + 1,
                                   steps=len(records), message=f"loading {rec.name}"))
        pts_a, tr_a = np.array(points), np.array(trusted)
        coarse = (Stage2Data(cimages, cfactors, pts_a, tr_a)
                  if cfg.coarse_config() is not None else None)
        data = Stage2Data(images, factors, pts_a, tr_a, coarse)
        if not data.trusted.any():
            raise LmkError("Stage II needs labelled landmarks: mark the exemplar first")
        if not (np.isfinite(data.points).all(-1) & ~data.trusted).any():
            raise LmkError("Stage II needs start points: run Stage I or the classical preview "
                           "first")
        res = fit_stage2(data, n, cfg, seed=seed, device=dev, progress=progress, cancel=cancel,
                         checkpoint=ckpt, resume=prev_ckpt is not None,
                         spacing=[r.spacing for r in used],
                         reviewed=_reviewed_pairs(proj, all_pts))
        # the points first (what the user waited for); then the model, whose loss only costs
        # predicting later images
        n_written = _write(proj, run_id, used, res.points, res.confidence, res.expected_error_px,
                           data.trusted)
        mpath = model_dir(proj) / f"stage2_run{run_id}" / "model.pt"
        warnings, saved = [], {}
        try:
            res.model.save(mpath)
            saved = {"model": checkpoints.to_stored(proj, mpath)}
        except (OSError, LmkError) as exc:
            warnings.append(f"the trained model could not be saved ({exc}); the points are in "
                            "the project, but predicting new images with Stage II needs a new "
                            "training run once the folder is writable")
        proj.finish_run(run_id, "finished",
                        metrics={"images": len(used), "points_written": n_written,
                                 "faults": faults, "warnings": warnings,
                                 "calibration": res.model.calibration,
                                 "mean_expected_error_px": float(np.nanmean(
                                     np.where(data.trusted, np.nan, res.expected_error_px)))},
                        checkpoints={**saved, "trainer": ck_stored},
                        timings=res.timings)
        return run_id
    except Cancelled:
        proj.finish_run(run_id, "cancelled", checkpoints={"trainer": ck_stored})
        raise
    except BaseException as exc:
        proj.finish_run(run_id, "failed", metrics={"error": str(exc)},
                        checkpoints={"trainer": ck_stored})
        raise


def _write(proj, run_id: int, records, pts: np.ndarray, conf: np.ndarray, err: np.ndarray,
           trusted: np.ndarray) -> int:
    """record_predictions for the run; set_points only where no human decision would be lost."""
    history, rows = [], []
    for i, rec in enumerate(records):
        current = {p.index: p for p in proj.points(rec.id)}
        for j in range(pts.shape[1]):
            if trusted[i, j] or not np.isfinite(pts[i, j]).all():
                continue
            lp = LandmarkPoint(j, float(pts[i, j, 0]), float(pts[i, j, 1]), Status.PREDICTED,
                               Source.STAGE2, float(conf[i, j]), float(err[i, j]), run_id)
            history.append((rec.id, lp))
            cur = current.get(j)
            if cur is not None and (cur.status.is_trusted or cur.status is Status.ABSENT):
                continue
            rows.append((rec.id, lp))
    proj.record_predictions(run_id, history)
    return proj.set_points(rows, keep_human=True)  # re-checked inside the write transaction


def _latest_model(proj):
    """The newest finished Stage II run with a saved model, and the model file."""
    for r in sorted(proj.runs(), key=lambda r: r.id, reverse=True):
        if r.kind == RUN_KIND and r.status == "finished":
            m = (r.checkpoints or {}).get("model")
            if m:
                f = checkpoints.resolve(proj, m, f"Stage II model of run {r.id}")
                if f.is_file():
                    return r, f
    raise LmkError(f"{proj.path}: no trained Stage II model yet: train Stage II first")


def predict_stage2_job(project: Any, device: str = "auto",
                       progress: ProgressCallback = no_progress,
                       cancel: CancelToken | None = None,
                       images: Sequence[int] | None = None) -> int:
    """Predict with the newest Stage II model, one image at a time (bounded memory).

    `images`: those images; None: every image the model has not predicted yet (its own training
    images and earlier predictions with it are not redone). Each image that gets fewer points
    than it needs is reported by name with the reason (metrics "faults"); "expected_points" is
    what the run set out to write, so a caller can tell a partial run from a complete one.
    """
    proj, owned = _open(project)
    try:
        dev = select_device(device)
        src_run, mpath = _latest_model(proj)
        model = Stage2Model.load(mpath, device=dev)
        n = model.n_landmarks
        records = proj.images()
        if images is not None:
            wanted = {int(i) for i in images}
            records = [r for r in records if r.id in wanted]
        else:
            todo = set(runs.needs_prediction(proj, src_run, "stage2-predict",
                                             [r.id for r in records]))
            records = [r for r in records if r.id in todo]
        starts, start_src = _start_points(proj, [r.id for r in records], n)
        run_id = proj.start_run("stage2-predict", {"model_run": src_run.id, "device": str(dev),
                                                   "start_points": start_src,
                                                   "images": len(records)})
        skipped: list[str] = []
        written = expected = 0
        t_img: list[float] = []
        try:
            for k, rec in enumerate(records):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                t0 = time.perf_counter()
                trusted, absent = runs.kept_landmarks(proj.points(rec.id), n)
                need = int((~trusted & ~absent).sum())
                expected += need
                init = starts.get(rec.id, np.full((n, 2), np.nan)).copy()
                if need == 0:
                    continue
                if not np.isfinite(init).all(-1)[~trusted & ~absent].any():
                    skipped.append(f"{rec.name}: no start point (run the preview or Stage I on "
                                   "it first)")
                    continue
                try:
                    down, f, cdown, cf = _load_levels(rec.path, model.cfg)
                    with torch.no_grad():
                        raw = model.predict_down(down, f, init, cdown, cf)
                    conf, err = score(raw, model.calibration,
                                      tolerance_px(model.cfg, rec.spacing))
                except (LmkError, ValueError, RuntimeError, cv2.error) as exc:
                    skipped.append(f"{rec.name}: {exc}")
                    continue
                got = _write(proj, run_id, [rec], raw.points[None], conf[None], err[None],
                             trusted[None])
                written += got
                if got < need:
                    skipped.append(f"{rec.name}: {need - got} of {need} point(s) not written "
                                   "(no start point for them, or marked by you meanwhile)")
                t_img.append(time.perf_counter() - t0)
                progress(ProgressEvent(stage="stage2-predict", epoch=0, epochs=1, step=k + 1,
                                       steps=len(records), message=f"predicted {rec.name}"))
        except Cancelled:
            proj.finish_run(run_id, "cancelled", metrics={"points_written": written})
            raise
        except BaseException as exc:
            proj.finish_run(run_id, "failed", metrics={"error": str(exc)})
            raise
        proj.finish_run(run_id, "finished",
                        metrics={"points_written": written, "expected_points": expected,
                                 "images": len(records), "faults": skipped},
                        timings={"total_s": float(sum(t_img)),
                                 "per_image_s": float(np.mean(t_img)) if t_img else None})
        return run_id
    finally:
        if owned:
            proj.close()
