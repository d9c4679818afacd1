"""Stage I jobs on a project store: train the learned registration and write its pseudo-landmarks
(Status.PREDICTED, Source.STAGE1) with per-landmark confidence; never overwrite the exemplar, an
accepted or corrected point, or a point the user marked absent."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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

from .config import load_preset
from .pipeline import Stage1Result, fit_stage1

RUN_KIND = "stage1"
_CLASSICAL_KINDS = ("classical", "preview", "stage0")


def _open(project: Any):
    if isinstance(project, str | Path):
        from lmk_studio.core.store import Project

        return Project.open(Path(project)), True
    return project, False


def load_normalized(path: Path) -> np.ndarray:
    """The engine's view of an image: float32 HxW in [0, 1] (core.images when present)."""
    try:
        from lmk_studio.core.images import load_image
    except ImportError:
        import cv2

        im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise LmkError(f"{path}: cannot read the image") from None
        if im.ndim == 3:
            im = cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)
        return runs.check_engine_image(im.astype(np.float32) / float(np.iinfo(im.dtype).max),
                                       Path(path).name)
    return runs.check_engine_image(load_image(path).normalized(), Path(path).name)


def _classical_points(proj, ids: Sequence[int], n: int) -> np.ndarray | None:
    """Per image, the points of the newest finished classical preview that predicted it."""
    got, _ = runs.latest_points(proj, ids, n, runs.CLASSICAL_KINDS)
    if not got:
        return None
    out = np.full((len(ids), n, 2), np.nan)
    for k, iid in enumerate(ids):
        if iid in got:
            out[k] = got[iid]
    return out


def _trusted_starts(proj, ids: Sequence[int], ex: int, start: np.ndarray) -> int:
    """Every trusted point (accepted, corrected) is its image's start, in place; returns how many.

    Why: the start is what the consensus hops carry from a neighbour to an image; a corrected
    neighbour then carries the clinician's point instead of its own propagation error (the
    images themselves are never written: _write keeps trusted points). The fused preview
    already put the trusted images' knowledge into the other images' starts."""
    put = 0
    for k, iid in enumerate(ids):
        if k == ex:
            continue
        for p in proj.points(iid):
            if p.status.is_trusted and p.placed and 0 <= p.index < start.shape[1]:
                start[k, p.index] = (p.x, p.y)
                put += 1
    return put


def train_stage1_job(project: Any, preset: str | None = "cpu", device: str = "auto",
                     resume: bool = False, seed: int | None = None,
                     progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None) -> int:
    """Train Stage I on the project's folder, write pseudo-landmarks, return the run id."""
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
    ex_id = proj.exemplar_id
    if ex_id is None:
        raise LmkError(f"{proj.path}: no exemplar: mark the landmarks on one image first")
    prev_dir = None
    if resume:
        for r in sorted(proj.runs(), key=lambda r: r.id, reverse=True):
            if r.kind == RUN_KIND and r.status in ("cancelled", "running", "failed"):
                c = (r.checkpoints or {}).get("dir")
                if c:
                    d = checkpoints.resolve(proj, c, f"checkpoint folder of run {r.id}")
                    prev_dir = d if d.is_dir() else None
                break
    from lmk_studio.engine import fusion

    trusted = fusion.trusted_sources(proj)
    run_id = proj.start_run(RUN_KIND, {"preset": cfg.name, "stage1": cfg.to_dict(), "seed": seed,
                                       "device": str(dev),
                                       "trusted_signature": fusion.signature(trusted),
                                       "trusted_images": sorted(trusted),
                                       "resumed_from": (checkpoints.to_stored(proj, prev_dir)
                                                        if prev_dir else None)})
    ckdir = prev_dir or (model_dir(proj) / f"stage1_run{run_id}")
    ck_stored = checkpoints.to_stored(proj, ckdir)
    try:
        full, used, faults = [], [], []
        for k, rec in enumerate(records):
            if cancel is not None:
                cancel.raise_if_cancelled()
            try:
                full.append(load_normalized(rec.path))
                used.append(rec)
            except LmkError as exc:
                faults.append(str(exc))
            progress(ProgressEvent(stage="stage1-load", epoch=0, epochs=1, step=k + 1,
                                   steps=len(records), message=f"loading {rec.name}"))
        ids = [r.id for r in used]
        if ex_id not in ids:
            raise LmkError(f"{proj.path}: the exemplar image could not be loaded")
        ex = ids.index(ex_id)
        ex_pts = np.full((n, 2), np.nan)
        for p in proj.points(ex_id):
            if p.placed:
                ex_pts[p.index] = (p.x, p.y)
        if not np.isfinite(ex_pts).all(-1).any():
            raise LmkError(f"{proj.path}: the exemplar has no placed landmarks")
        start = _classical_points(proj, ids, n) if cfg.start == "classical" else None
        if start is not None:
            start[ex] = ex_pts
            _trusted_starts(proj, ids, ex, start)
        res = fit_stage1(full, ex, ex_pts, cfg, seed, dev, progress, cancel, ckdir,
                         prev_dir is not None, start)
        # the points first: they are what the user waited for; a model that cannot be saved
        # afterwards costs only `predict --method stage1` on later images, never the points
        written = _write(proj, run_id, used, ex, res)
        paths, warnings = _save_models(proj, ckdir, cfg, res)
        proj.finish_run(run_id, "finished",
                        metrics={"images": len(used), "points_written": written, "faults": faults,
                                 "warnings": warnings,
                                 "notes": res.notes,
                                 "candidates": res.history.get("candidates"),
                                 "mean_confidence": float(np.nanmean(res.confidence)),
                                 "selection": "label-free: held-out esim+global loss"},
                        checkpoints={"dir": ck_stored, **paths}, timings=res.timings)
        return run_id
    except Cancelled:
        proj.finish_run(run_id, "cancelled", checkpoints={"dir": ck_stored})
        raise
    except BaseException as exc:
        proj.finish_run(run_id, "failed", metrics={"error": str(exc)},
                        checkpoints={"dir": ck_stored})
        raise


def _save_models(proj, ckdir: Path, cfg, res: Stage1Result) -> tuple[dict[str, str], list[str]]:
    """Save each trained pass next to the run; a failure is a warning, not a lost run."""
    paths: dict[str, str] = {}
    extra = res.models.get("refine_landmark_states")
    try:
        # a preset whose passes never checkpoint (e.g. cpu: refine epochs 0) made no folder yet
        ckdir.mkdir(parents=True, exist_ok=True)
        for name, net in res.models.items():
            if name == "refine_landmark_states":
                continue
            path = ckdir / f"{name}_model.pt"
            blob = {"state": net.state_dict(), "config": cfg.to_dict()}
            if name == "refine" and extra:
                blob["landmark_states"] = extra
            checkpoints.save(blob, path)
            paths[name] = checkpoints.to_stored(proj, path)
    except (OSError, LmkError) as exc:
        return paths, [f"the trained models could not be saved in {ckdir} ({exc}); the points "
                       "are in the project, but predicting new images with Stage I needs a "
                       "new training run once the folder is writable"]
    return paths, []


def _write(proj, run_id: int, records, ex: int, res: Stage1Result) -> int:
    history, rows = [], []
    for i, rec in enumerate(records):
        if i == ex:
            continue
        current = {p.index: p for p in proj.points(rec.id)}
        for j in range(res.points.shape[1]):
            if not np.isfinite(res.points[i, j]).all():
                continue
            lp = LandmarkPoint(j, float(res.points[i, j, 0]), float(res.points[i, j, 1]),
                               Status.PREDICTED, Source.STAGE1, float(res.confidence[i, j]),
                               None, run_id)
            history.append((rec.id, lp))
            cur = current.get(j)
            if cur is not None and (cur.status.is_trusted or cur.status is Status.ABSENT):
                continue
            rows.append((rec.id, lp))
    proj.record_predictions(run_id, history)
    return proj.set_points(rows, keep_human=True)  # re-checked inside the write transaction


def predict_stage1_job(project: Any, device: str = "auto",
                       progress: ProgressCallback = no_progress,
                       cancel: CancelToken | None = None,
                       images: Sequence[int] | None = None) -> int:
    """Re-run the newest trained Stage I model (its preset, no training) on some images.

    `images`: those images; None: the images the model has not predicted yet (never the ones it
    was trained on or already predicted, so nothing is re-adapted for nothing). The learned
    passes need the training folder only for their weights, so this re-uses the newest finished
    run's saved models with epochs=0. An image that cannot be loaded is skipped by name.
    """
    proj, owned = _open(project)
    try:
        src = runs.newest_finished(proj, (RUN_KIND,))
        if src is None:
            raise LmkError(f"{proj.path}: no trained Stage I model yet: train Stage I first")
        from .config import Stage1Config
        from .pipeline import predict_with_models

        cfg = Stage1Config.from_dict(src.config["stage1"])
        dev = select_device(device)
        n = len(proj.template)
        records = proj.images()
        ex_id = proj.exemplar_id
        if ex_id is None:
            raise LmkError(f"{proj.path}: no exemplar: mark the landmarks on one image first")
        if images is not None:
            wanted = {int(i) for i in images}
        else:
            wanted = set(runs.needs_prediction(proj, src, "stage1-predict",
                                               [r.id for r in records if r.id != ex_id]))
        recs = [r for r in records if r.id == ex_id or r.id in wanted]
        run_id = proj.start_run("stage1-predict", {"model_run": src.id, "device": str(dev),
                                                   "images": len(recs) - 1})
        skipped: list[str] = []
        written = expected = 0
        try:
            models = {k: checkpoints.resolve(proj, v, f"Stage I {k} model of run {src.id}")
                      for k, v in (src.checkpoints or {}).items() if k in ("coarse", "refine")}
            full, used = [], []
            for rec in recs:
                try:
                    full.append(load_normalized(rec.path))
                    used.append(rec)
                except LmkError as exc:
                    if rec.id == ex_id:
                        raise LmkError(f"the exemplar image cannot be loaded: {exc}") from exc
                    skipped.append(str(exc))
            ids = [r.id for r in used]
            ex = ids.index(ex_id)
            ex_pts = np.full((n, 2), np.nan)
            for p in proj.points(ex_id):
                if p.placed:
                    ex_pts[p.index] = (p.x, p.y)
            expected = 0
            for r in used:
                if r.id != ex_id:
                    trusted, absent = runs.kept_landmarks(proj.points(r.id), n)
                    expected += int((~trusted & ~absent).sum())
            if len(used) > 1:
                start = _classical_points(proj, ids, n) if cfg.start == "classical" else None
                res = predict_with_models(full, ex, ex_pts, cfg, models, dev, start, progress,
                                          cancel, (src.metrics or {}).get("candidates"))
                written = _write(proj, run_id, used, ex, res)
        except Cancelled:
            proj.finish_run(run_id, "cancelled")
            raise
        except BaseException as exc:
            proj.finish_run(run_id, "failed", metrics={"error": str(exc)})
            raise
        proj.finish_run(run_id, "finished",
                        metrics={"points_written": written, "expected_points": expected,
                                 "images": len(used) - 1, "faults": skipped})
        return run_id
    finally:
        if owned:
            proj.close()

