"""What the engine jobs share about a project's runs: whose points each image starts from, and
which images still need a method's prediction.

Per image, not per run: after `predict --images` a newer run holds only the new images, so
"the newest run" would hide every older image's points (and before this module, Stage II found no
start point on images added later and wrote nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lmk_studio.core.errors import LmkError
from lmk_studio.core.points import Status

FINISHED = "finished"
#: run kinds whose points are Stage I pseudo-landmarks (training or a later prediction)
STAGE1_KINDS = ("stage1", "stage1-predict")
STAGE2_KINDS = ("stage2", "stage2-predict")
CLASSICAL_KINDS = ("classical",)
#: up to this many images, a run's points are read for those images only
FEW_IMAGES = 200
#: the smallest image the engines accept (the preview's pyramid and the patches need it)
MIN_SIDE = 32


def latest_points(project: Any, image_ids: Iterable[int], n: int, kinds: Sequence[str]
                  ) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Per image, the (n, 2) points of the newest finished run of `kinds` that predicted it,
    and that run's id; images no such run predicted are absent from both dicts."""
    remaining = {int(i) for i in image_ids}
    out: dict[int, np.ndarray] = {}
    src: dict[int, int] = {}
    for r in sorted(project.runs(), key=lambda r: r.id, reverse=True):
        if not remaining:
            break
        if r.kind not in kinds or r.status != FINISHED:
            continue
        # a few images (new patients): ask for those only; a whole folder: one read per run
        preds = (project.predictions(r.id, remaining) if len(remaining) <= FEW_IMAGES
                 else project.predictions(r.id))
        for iid in sorted(remaining & set(preds)):
            arr = np.full((n, 2), np.nan)
            for p in preds[iid]:
                if p.x is not None and p.y is not None and 0 <= p.index < n:
                    arr[p.index] = (p.x, p.y)
            if np.isfinite(arr).any():
                out[iid], src[iid] = arr, r.id
                remaining.discard(iid)
    return out, src


def describe_sources(src: dict[int, int], project: Any) -> str:
    """'run 3 (stage1): 29 images; run 7 (stage1-predict): 20 images' for a run's config."""
    if not src:
        return "none"
    kinds = {r.id: r.kind for r in project.runs()}
    counts: dict[int, int] = {}
    for rid in src.values():
        counts[rid] = counts.get(rid, 0) + 1
    return "; ".join(f"run {rid} ({kinds.get(rid, '?')}): {c} image(s)"
                     for rid, c in sorted(counts.items()))


def newest_finished(project: Any, kinds: Sequence[str]):
    """The newest finished run of `kinds`, or None."""
    runs = [r for r in project.runs() if r.kind in kinds and r.status == FINISHED]
    return max(runs, key=lambda r: r.id) if runs else None


def needs_prediction(project: Any, model_run: Any, predict_kind: str,
                     image_ids: Iterable[int]) -> list[int]:
    """The images that neither the model's own run nor a later prediction with that model
    predicted: what `predict` does without --images, so a trained model never redoes work."""
    done: set[int] = set(project.predictions(model_run.id))
    for r in project.runs():
        if (r.kind == predict_kind and r.status == FINISHED
                and (r.config or {}).get("model_run") == model_run.id):
            done |= set(project.predictions(r.id))
    return [int(i) for i in image_ids if int(i) not in done]


def kept_landmarks(points: Iterable[Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(trusted, absent) masks over an image's n landmarks: a prediction fills the others and
    never these (a placed exemplar / accepted / corrected point, or one marked absent)."""
    trusted, absent = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for p in points:
        if 0 <= p.index < n:
            trusted[p.index] = bool(p.status.is_trusted and p.placed)
            absent[p.index] = p.status is Status.ABSENT
    return trusted, absent


def check_engine_image(img: np.ndarray, name: str) -> np.ndarray:
    """Refuse what no engine can use, naming the image, before any work is spent on it."""
    if img.ndim != 2 or min(img.shape) < MIN_SIDE:
        raise LmkError(f"{name}: image of {img.shape[1] if img.ndim > 1 else '?'} x "
                       f"{img.shape[0]} pixels is too small to predict (at least {MIN_SIDE} x "
                       f"{MIN_SIDE} needed); skipped")
    return img
