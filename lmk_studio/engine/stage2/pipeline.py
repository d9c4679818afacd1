"""Array-level Stage II: train C2T, predict every image, calibrate confidence (no store, no Qt).

job.py wraps this with the project store; the benchmark and tests call it directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmk_studio.engine.common import (
    CancelToken,
    ProgressCallback,
    ProgressEvent,
    no_progress,
)

from .confidence import calibrate, features, rescale_from_reviews, score
from .config import Stage2Config
from .model import Stage2Model
from .trainer import Stage2Data, Stage2Trainer


@dataclass
class Stage2Result:
    model: Stage2Model
    points: np.ndarray              # (M, N, 2) original px (trusted rows: the trusted labels)
    confidence: np.ndarray          # (M, N)
    expected_error_px: np.ndarray   # (M, N)
    features: np.ndarray            # (M, N, F)
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def tolerance_px(cfg: Stage2Config, spacing: tuple[float, float] | None) -> float:
    if spacing:
        return cfg.tolerance_mm / float(np.mean(spacing))
    return cfg.tolerance_px


def predict_all(model: Stage2Model, data: Stage2Data, which: Sequence[int] | None = None,
                progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
                ) -> tuple[np.ndarray, list]:
    """Predict images `which` (default all) from data.points as start points."""
    idx = list(range(len(data.images))) if which is None else list(which)
    n = model.n_landmarks
    pts = np.full((len(data.images), n, 2), np.nan)
    raws: list = [None] * len(data.images)
    for k, i in enumerate(idx):
        if cancel is not None:
            cancel.raise_if_cancelled()
        c = data.coarse
        raw = model.predict_down(data.images[i], data.factors[i], data.points[i],
                                 c.images[i] if c else None, c.factors[i] if c else None)
        raws[i] = raw
        pts[i] = raw.points
        progress(ProgressEvent(stage="stage2-predict", epoch=0, epochs=1, step=k + 1,
                               steps=len(idx), message=f"Stage II predicting {k + 1}/{len(idx)}"))
    return pts, raws


def fit_stage2(data: Stage2Data, n_landmarks: int, cfg: Stage2Config, *, seed: int = 0,
               device: torch.device | str = "cpu", progress: ProgressCallback = no_progress,
               cancel: CancelToken | None = None, checkpoint: Path | None = None,
               resume: bool = False, spacing: Sequence[tuple[float, float] | None] | None = None,
               reviewed: tuple[np.ndarray, np.ndarray] | None = None) -> Stage2Result:
    """Train, predict all images, calibrate confidence on synthetic warps of trusted images.

    reviewed: (expected error px, actual error px) of an earlier run's points that the user has
    since accepted or corrected (any shape, NaN = none); they set the expected-error scale.
    """
    t0 = time.monotonic()
    coarse_model = None
    ccfg = cfg.coarse_config()
    if ccfg is not None:
        if data.coarse is None:
            raise ValueError("the preset has a coarse level: build Stage2Data with coarse_scale")
        ck = Path(str(checkpoint) + ".coarse") if checkpoint else None
        ctr = Stage2Trainer(ccfg, data.coarse, n_landmarks, device=device, seed=seed + 1000,
                            checkpoint=ck)

        def cprog(ev: ProgressEvent) -> None:
            ev.stage = "stage2-coarse"
            progress(ev)

        coarse_model = Stage2Model(ccfg, n_landmarks,
                                   ctr.train(progress=cprog, cancel=cancel, resume=resume),
                                   device=device)
    trainer = Stage2Trainer(cfg, data, n_landmarks, device=device, seed=seed,
                            checkpoint=checkpoint)
    nets = trainer.train(progress=progress, cancel=cancel, resume=resume)
    t1 = time.monotonic()
    model = Stage2Model(cfg, n_landmarks, nets, device=device, coarse=coarse_model)
    pts, raws = predict_all(model, data, progress=progress, cancel=cancel)
    t2 = time.monotonic()
    untrusted = ~data.trusted & np.isfinite(pts).all(axis=-1)
    move = np.linalg.norm(pts - data.points, axis=-1)[untrusted]
    unl_feats = np.concatenate([features(raws[i])[untrusted[i]] for i in range(len(raws))
                                if raws[i] is not None]) if untrusted.any() else None
    model.calibration = calibrate(model, data, move, seed=seed, unlabelled_features=unl_feats)
    if reviewed is not None:
        model.calibration = rescale_from_reviews(model.calibration, *reviewed)
    t3 = time.monotonic()
    m = len(data.images)
    conf = np.full((m, n_landmarks), np.nan)
    err = np.full((m, n_landmarks), np.nan)
    feats = np.full((m, n_landmarks, 6), np.nan)
    for i, raw in enumerate(raws):
        sp = spacing[i] if spacing is not None else None
        c, e = score(raw, model.calibration, tolerance_px(cfg, sp))
        conf[i], err[i] = c, e
        feats[i] = features(raw)
    # trusted labels stay what the human said
    pts = np.where(data.trusted[..., None], data.points, pts)
    conf = np.where(data.trusted, 1.0, conf)
    err = np.where(data.trusted, 0.0, err)
    return Stage2Result(model, pts, conf, err, feats,
                        timings={"train_s": t1 - t0, "predict_s": t2 - t1,
                                 "calibrate_s": t3 - t2},
                        history=trainer.history)
