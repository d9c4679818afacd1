"""`lmk-studio evaluate`: the project's current points against ground truth.

Truth: labelme folder(s) (several annotators are averaged per landmark; where one annotator's
point is missing or faulty the others' are used alone: the Hamedan README protocol), ISBI 2015
text folder(s), or a project CSV/JSON (e.g. the demo's truth.csv). The exemplar image is
excluded (it was given, not predicted). Figures in mm when every evaluated image has a spacing
(file or calibration), else px; px figures are always printed too.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lmk_studio.core.errors import LmkError


def parse_thresholds(text: str) -> list[float]:
    try:
        vals = [float(t) for t in str(text).replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise LmkError(f"--thresholds {text!r}: expected numbers separated by commas") from None
    if not vals or any(not np.isfinite(v) or v <= 0 for v in vals):
        raise LmkError(f"--thresholds {text!r}: expected positive numbers, e.g. 2,2.5,3,4")
    return vals


def _read_source(path: Path, template: Any) -> tuple[dict[str, np.ndarray], list[str], str]:
    """One truth source -> ({key: (N, 2)}, faults, kind)."""
    from lmk_studio.core import formats

    n = len(template)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        if any(p.suffix.lower() == ".json" for p in files):
            stems, arr, faults = formats.average_labelme_truth([path], template)
            return {s: arr[i] for i, s in enumerate(stems)}, [str(f) for f in faults], "labelme"
        txts = sorted(p for p in files if p.suffix.lower() == ".txt")
        if txts:
            out: dict[str, np.ndarray] = {}
            faults: list[str] = []
            for p in txts:
                pts, fl = formats.read_isbi_points(p, n, display=f"{path.name}/{p.name}")
                faults += [str(f) for f in fl]
                a = np.full((n, 2), np.nan)
                for k, xy in pts.items():
                    a[k] = xy
                out[p.stem] = a
            return out, faults, "ISBI"
        raise LmkError(f"{path}: no labelme .json or ISBI .txt files in this folder")
    if path.is_file():
        table, faults = formats.read_points_table(path, template)
        return table, [str(f) for f in faults], "table"
    raise LmkError(f"{path}: truth not found")


def _combine(sources: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """Per key and landmark: the mean over the sources that have a finite point."""
    keys = sorted(set().union(*sources))
    out = {}
    for k in keys:
        stack = np.stack([s[k] if k in s else np.full((n, 2), np.nan) for s in sources])
        ok = np.isfinite(stack).all(axis=-1)
        cnt = ok.sum(axis=0)
        tot = np.where(ok[..., None], stack, 0.0).sum(axis=0)
        out[k] = np.where(cnt[:, None] > 0, tot / np.maximum(cnt, 1)[:, None], np.nan)
    return out


def evaluate_project(project: Any, truth_paths: list[str | Path], thresholds: list[float],
                     default_spacing: float | None = None) -> tuple[Any, dict[str, Any]]:
    """(MetricReport, context dict for the JSON) — shared by the CLI and tests."""
    from lmk_studio.core.formats import ImageIndex
    from lmk_studio.core.metrics import evaluate_points

    template = project.template
    n = len(template)
    srcs, faults, kinds = [], [], []
    for p in truth_paths:
        table, fl, kind = _read_source(Path(p), template)
        srcs.append(table)
        faults += fl
        kinds.append(kind)
    truth = _combine(srcs, n)
    index = ImageIndex(project.images())
    ex_id = project.exemplar_id
    matched: dict[int, np.ndarray] = {}
    unmatched: list[str] = []
    for key, arr in truth.items():
        rec, _why = index.find(key)
        if rec is None:
            unmatched.append(key)
        elif rec.id != ex_id:
            matched[rec.id] = arr
    if not matched:
        raise LmkError(
            f"none of the {len(truth)} truth entries matches a (non-exemplar) image of "
            f"{project.path}" + (f" (e.g. {', '.join(unmatched[:3])})" if unmatched else ""))
    recs = [r for r in project.images() if r.id in matched]
    allp = project.all_points()
    pred = np.full((len(recs), n, 2), np.nan)
    gt = np.stack([matched[r.id] for r in recs])
    status_counts: Counter[str] = Counter()
    for i, r in enumerate(recs):
        for p in allp.get(r.id, []):
            if p.placed:
                pred[i, p.index] = (p.x, p.y)
                if np.isfinite(gt[i, p.index]).all():
                    status_counts[p.status.value] += 1
    fallback = (default_spacing, default_spacing) if default_spacing else (np.nan, np.nan)
    spacing = np.array([r.spacing if r.spacing else fallback for r in recs], dtype=float)
    sp = None if not np.isfinite(spacing).any() else spacing
    report = evaluate_points(pred, gt, sp, thresholds, names=template.names,
                             image_names=[r.name for r in recs])
    if unmatched:
        report.notes.append(f"{len(unmatched)} truth entr(y/ies) match no project image: "
                            + ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""))
    ex_name = project.image(ex_id).name if ex_id is not None else None
    ctx = {
        "project": str(project.path),
        "exemplar": ex_name,
        "truth": [str(p) for p in truth_paths],
        "truth_kinds": kinds,
        "truth_faults": faults,
        "evaluated_points_by_status": dict(sorted(status_counts.items())),
        "thresholds": thresholds,
    }
    return report, ctx


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lmk_studio.core.formats import atomic_write_text
    from lmk_studio.core.store import Project

    thresholds = parse_thresholds(args.thresholds)
    with Project.open(Path(args.project)) as proj:
        report, ctx = evaluate_project(proj, list(args.truth), thresholds,
                                       getattr(args, "spacing", None))
    print(f"project: {ctx['project']}")
    print(f"exemplar (excluded): {ctx['exemplar'] or 'none set'}")
    print(f"truth: {', '.join(ctx['truth'])} ({'/'.join(ctx['truth_kinds'])}"
          + (", averaged" if len(ctx["truth"]) > 1 else "") + ")")
    if ctx["truth_faults"]:
        print(f"truth faults ({len(ctx['truth_faults'])}; those points use the other sources "
              "or are left out):")
        for f in ctx["truth_faults"]:
            print(f"  {f}")
    by = ", ".join(f"{k} {v}" for k, v in ctx["evaluated_points_by_status"].items())
    print(f"evaluated points by status: {by or 'none'}")
    print(report.format_table())
    if args.json:
        doc = {**ctx, "metrics": report.to_dict()}
        atomic_write_text(args.json, json.dumps(doc, indent=1, ensure_ascii=False,
                                                allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0
