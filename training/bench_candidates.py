"""DIAGNOSTIC (calls engine internals): per-landmark candidate choice on Hamedan, exemplar 001.

For every image 002-120 the candidates of engine.candidates (the exemplar's point copied, the
preview's ECC affine alone, the classical preview, each also after a local search, plus Stage I's
points when --stage1 names a file) are scored label-free, one candidate is chosen per landmark
over the folder, and everything is measured against the truth (mean of the two doctors, read
through core.formats). Labels only measure.

Settings (the choice's margin; scales and search size were chosen the same way in scratch runs,
see the report's notes) are chosen on images 002-060 only; figures are reported on 061-120 and on
all of 002-120 separately.

    nice -n 10 .venv/bin/python training/bench_candidates.py [--reuse] [--stage1 FILE.npz]

--stage1: an .npz with `pts` (120, 19, 2) full-resolution Stage I points (image order 001-120).
--reuse: take candidates and scores from training/cache/ when the inputs match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LMK_HAMEDAN", REPO.parent / "shared" / "data" / "hamedan_ceph"))
CACHE = REPO / "training" / "cache"
REPORTS = REPO / "training" / "reports"
MM_PER_PX = 0.125
N_IMG = 120
DEV = np.arange(1, 60)        # images 002-060: settings are chosen here
TEST = np.arange(60, 120)     # images 061-120: reported
ALL = np.arange(1, 120)       # images 002-120: reported
MARGINS = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
# the report conventions and the truth of the Stage I benchmark (same protocol, same tables)
from bench_stage1 import NAMES, NOTES_MARK, THRESH  # noqa: E402
from bench_stage2 import load_truth  # noqa: E402


def load_image(i: int) -> np.ndarray:
    from lmk_studio.core.images import load_image as li

    return li(DATA / "images" / f"{i + 1:03d}.png").normalized()


def compute(truth: np.ndarray, stage1: np.ndarray | None, key: str, reuse: bool) -> dict:
    """Candidates, scores and preview confidences for images 002-120 (cached by `key`)."""
    from lmk_studio.engine.candidates import DEFAULT_CANDIDATES, image_candidates

    path = CACHE / f"candidates_{key}.npz"
    if reuse and path.exists():
        z = np.load(path, allow_pickle=False)
        return {"names": [str(x) for x in z["names"]], "points": z["points"],
                "scores": z["scores"], "conf": z["conf"], "seconds": float(z["seconds"])}
    ex = load_image(0)
    pts = scores = conf = None
    names: list[str] = []
    t0 = time.perf_counter()
    for k in ALL:
        extra = {"stage1": stage1[k]} if stage1 is not None else None
        cs, sc, cf = image_candidates(ex, truth[0], load_image(int(k)), DEFAULT_CANDIDATES,
                                      extra)
        if pts is None:
            names = list(cs.names)
            pts = np.full((N_IMG, *cs.points.shape), np.nan)
            scores = np.full((N_IMG, *sc.shape), np.nan)
            conf = np.full((N_IMG, cs.points.shape[1]), np.nan)
        pts[k], scores[k], conf[k] = cs.points, sc, cf
    seconds = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(names), points=pts, scores=scores, conf=conf,
             seconds=seconds)
    return {"names": names, "points": pts, "scores": scores, "conf": conf, "seconds": seconds}


def summary(err: np.ndarray) -> dict:
    e = err[np.isfinite(err)]
    mm = e * MM_PER_PX
    return {"mre_px": float(e.mean()), "sd_px": float(e.std()), "median_px": float(np.median(e)),
            "mre_mm": float(mm.mean()),
            "sdr": {f"{t:g}": float((mm <= t).mean() * 100) for t in THRESH}}


def chosen_points(res: dict, idx: np.ndarray, margin: float, primary: str) -> tuple[
        np.ndarray, list[str]]:
    """The per-landmark choice from the label-free scores of the images `idx`, applied to all."""
    from lmk_studio.engine.candidates import CandidateSet, apply_choice, choose_per_landmark

    ch = choose_per_landmark(res["scores"][idx], res["names"], primary, margin)
    out = np.full(res["points"].shape[:1] + res["points"].shape[2:], np.nan)
    for k in ALL:
        cs = CandidateSet(list(res["names"]), res["points"][k],
                          np.zeros((*res["points"].shape[1:3], 2, 2)))
        out[k] = apply_choice(cs, ch)
    return out, ch.chosen_names()


def fmt_table(rows: list[tuple[str, dict]]) -> list[str]:
    out = ["| method | MRE px | SD px | median px | MRE mm | SDR 2/2.5/3/4 mm % |",
           "|---|---|---|---|---|---|"]
    for name, s in rows:
        out.append(f"| {name} | {s['mre_px']:.2f} | {s['sd_px']:.1f} | {s['median_px']:.1f} | "
                   f"{s['mre_mm']:.2f} | "
                   + " / ".join(f"{v:.1f}" for v in s["sdr"].values()) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--stage1", type=Path, default=None)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    import cv2

    from lmk_studio.engine.candidates import DEFAULT_CANDIDATES, PREVIEW

    cv2.setNumThreads(1)
    t_start = time.monotonic()
    truth = load_truth()
    stage1 = None
    if args.stage1 is not None:
        stage1 = np.asarray(np.load(args.stage1)["pts"], dtype=np.float64)
    h = hashlib.sha1(json.dumps(asdict(DEFAULT_CANDIDATES)).encode())
    h.update((REPO / "lmk_studio" / "engine" / "candidates.py").read_bytes())
    h.update((REPO / "lmk_studio" / "engine" / "classical.py").read_bytes())
    if stage1 is not None:
        h.update(stage1.tobytes())
    res = compute(truth, stage1, h.hexdigest()[:12], args.reuse)
    names = res["names"]
    primary = "stage1" if stage1 is not None else PREVIEW
    err = np.linalg.norm(res["points"] - truth[:, None], axis=-1)          # (M, C, N)

    # settings on 002-060 only: the margin with the lowest dev MRE (ties -> the larger margin,
    # the more conservative one)
    sweep = []
    for m in MARGINS:
        p, chosen = chosen_points(res, ALL, m, primary)
        e = np.linalg.norm(p - truth, axis=-1)
        sweep.append((m, float(e[DEV].mean()), float(e[TEST].mean()), chosen))
    best_dev = min(s[1] for s in sweep)
    margin = max(s[0] for s in sweep if s[1] <= best_dev + 1e-9)
    final, chosen = chosen_points(res, ALL, margin, primary)
    _, chosen_test_only = chosen_points(res, TEST, margin, primary)
    e_final = np.linalg.norm(final - truth, axis=-1)

    lines = ["# Candidate choice per landmark on Hamedan — DIAGNOSTIC", "",
             "A diagnostic, not a product benchmark: `training/bench_candidates.py` calls "
             "`engine.candidates` internals directly.  ",
             "Command: `nice -n 10 .venv/bin/python training/bench_candidates.py"
             + (f" --stage1 {args.stage1}" if args.stage1 else "") + "`  ",
             "Protocol: Hamedan dev set, exemplar 001 (its labels only), truth = mean of the two "
             "doctors (core.formats.hamedan_truth), 0.125 mm/px (estimate).  ",
             f"Settings chosen on images 002-060 only (margin {margin:g}, from the sweep below; "
             f"score radii {DEFAULT_CANDIDATES.score_radii}, search radius/window "
             f"{DEFAULT_CANDIDATES.search_radius}/{DEFAULT_CANDIDATES.search_window} of the long "
             "side); the per-landmark choice itself is label-free, from the scores of all "
             "119 targets (transductive, as the product runs).  ",
             f"Primary (kept unless beaten by the margin): `{primary}`. "
             f"Candidates + scores: {res['seconds']:.0f} s for 119 images "
             f"({res['seconds'] / 119:.2f} s/image, 1 OpenCV thread, shared 2-core CPU; "
             f"{platform.machine()}).", ""]
    for title, idx in (("Images 061-120 (held out from every setting)", TEST),
                       ("All images 002-120", ALL)):
        lines += [f"## {title}", ""]
        rows = [(f"candidate `{c}`", summary(err[idx, i])) for i, c in enumerate(names)]
        rows.append(("**chosen per landmark**", summary(e_final[idx])))
        lines += fmt_table(rows) + [""]
        lines += ["Per-landmark MRE px (chosen = the candidate named in the last column):", "",
                  "| landmark | " + " | ".join(names) + " | **chosen** | winner |",
                  "|---|" + "---|" * (len(names) + 2)]
        for j, nm in enumerate(NAMES):
            cells = [f"{err[idx, i, j].mean():.1f}" for i in range(len(names))]
            lines.append(f"| {j + 1} {nm} | " + " | ".join(cells)
                         + f" | **{e_final[idx, j].mean():.1f}** | {chosen[j]} |")
        lines.append("")
    lines += ["## Margin sweep (setting chosen on 002-060; 061-120 shown, not used)", "",
              "| margin | MRE 002-060 px | MRE 061-120 px | landmarks off the primary |",
              "|---|---|---|---|"]
    for m, d, t, ch in sweep:
        off = ", ".join(f"{j + 1}:{c}" for j, c in enumerate(ch) if c != primary) or "none"
        lines.append(f"| {m:g} | {d:.2f} | {t:.2f} | {off} |")
    same = chosen == chosen_test_only
    lines += ["", "Choice from the scores of 061-120 alone (inductive check): "
              + ("identical to the transductive choice." if same else
                 "differs: " + ", ".join(f"{j + 1}: {a} -> {b}" for j, (a, b) in
                                          enumerate(zip(chosen, chosen_test_only, strict=True))
                                          if a != b)),
              "", f"Bench wall time {(time.monotonic() - t_start) / 60:.1f} min.", ""]
    text = "\n".join(lines)
    print(text)
    if args.no_report:
        return
    REPORTS.mkdir(parents=True, exist_ok=True)
    md = REPORTS / "candidates.md"
    notes = ""
    if md.exists() and NOTES_MARK in md.read_text():
        notes = md.read_text().split(NOTES_MARK, 1)[1]
    md.write_text(text + "\n" + NOTES_MARK + notes)
    (REPORTS / "candidates.json").write_text(json.dumps({
        "exemplar": "001", "primary": primary, "margin": margin, "names": names,
        "chosen": chosen, "params": asdict(DEFAULT_CANDIDATES),
        "test_061_120": {"chosen": summary(e_final[TEST]),
                         "per_landmark_px": e_final[TEST].mean(0).tolist(),
                         "candidates_per_landmark_px": err[TEST].mean(0).tolist()},
        "all_002_120": {"chosen": summary(e_final[ALL]),
                        "per_landmark_px": e_final[ALL].mean(0).tolist(),
                        "candidates_per_landmark_px": err[ALL].mean(0).tolist()},
        "margin_sweep": [{"margin": m, "dev_mre_px": d, "test_mre_px": t}
                         for m, d, t, _ in sweep]}, indent=1))


if __name__ == "__main__":
    main()
