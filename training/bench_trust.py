"""Review effort and calibration of the confidence / expected error (issue 11), on Hamedan.

Protocol (the data set's README): exemplar 001, truth = mean of the two doctors, 0.125 mm/px.
Settings (engine.trust's coefficients and scale) are chosen on images 002-060 only (--fit prints
them); figures are reported on 061-120 and on all of 002-120.

Two sources of predictions:

- DIAGNOSTIC (engine functions called on cached predictions): the candidates of
  training/bench_candidates.py (cache training/cache/candidates_<key>.npz: the exemplar's point
  copied, the ECC affine, the classical preview, Stage I's points, each with its searched twin,
  and their label-free scores). The per-landmark choice is made as the product makes it
  (engine.candidates.choose_per_landmark), then engine.trust scores the chosen points: per image
  as the product's jobs do today (choice_confidence, IMAGE_MODEL) and with folder medians
  (folder_expected_error, FOLDER_MODEL, which needs the hook described in the report).
- PRODUCT (--csv FILE ...): an exported CSV of a project run through the product's commands
  (training/bench_product.py); confidence and expected_error_px columns as exported (an empty
  expected error is read back from the confidence with engine.trust.expected_from_confidence).

For each: Spearman(expected error, actual error); the share of > 4 mm errors among the 10 %
least-confident points; how many points a reviewer opens, walking the queue in confidence order,
to reach 90 % of the points with error > 2 mm and > 4 mm, beside the random order (expected
value) and the ideal order; median actual / expected overall and per landmark; and after
reviewing the 3 / 10 images the queue puts first, the per-landmark conformal scale
(engine.trust.conformal_scale) applied to the rest.

    nice -n 10 .venv/bin/python training/bench_trust.py [--fit] [--csv FILE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LMK_HAMEDAN", REPO.parent / "shared" / "data" / "hamedan_ceph"))
CACHE = REPO / "training" / "cache"
REPORTS = REPO / "training" / "reports"
CAND_FILE = CACHE / "candidates_1da77d1b6fec.npz"   # bench_candidates.py --stage1 (8 candidates)
MM = 0.125
T2, T4 = 2.0 / MM, 4.0 / MM
IDX = np.arange(1, 120)          # images 002-120
SPLITS = {"061-120": IDX >= 60, "all 002-120": IDX >= 1, "002-060 (chosen on)": IDX < 60}
NAMES = ["sella", "nasion", "orbitale", "porion", "subspinale", "supramentale", "pogonion",
         "menton", "gnathion", "gonion", "lower incisal inc.", "upper incisal inc.", "upper lip",
         "lower lip", "subnasale", "soft-tissue pogonion", "PNS", "ANS", "articulare"]


def truth() -> np.ndarray:
    from lmk_studio.core.formats import hamedan_truth

    return np.asarray(hamedan_truth(DATA)[1], dtype=np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def effort(risk: np.ndarray, err: np.ndarray, thr: float, frac: float = 0.9
           ) -> tuple[int, float, int]:
    """Points opened in queue order (largest risk first) to reach `frac` of the errors > thr;
    the expected count in random order; the ideal count."""
    r, e = risk.ravel(), err.ravel()
    ok = np.isfinite(r) & np.isfinite(e)
    r, e = r[ok], e[ok]
    bad = e > thr
    need = int(np.ceil(frac * bad.sum()))
    if need == 0:
        return 0, 0.0, 0
    hit = np.cumsum(bad[np.argsort(-r, kind="stable")])
    opened = int(np.searchsorted(hit, need) + 1)
    rand = need * (len(e) + 1) / (bad.sum() + 1)
    return opened, float(rand), need


def capture(risk: np.ndarray, err: np.ndarray, thr: float = T4, q: float = 0.1) -> float:
    r, e = risk.ravel(), err.ravel()
    ok = np.isfinite(r) & np.isfinite(e)
    r, e = r[ok], e[ok]
    k = int(round(q * len(r)))
    bad = e > thr
    return float(bad[np.argsort(-r, kind="stable")[:k]].sum() / max(bad.sum(), 1))


def summary(exp: np.ndarray, err: np.ndarray) -> dict:
    """Every figure for one (expected error, actual error) pair of (M, N) arrays."""
    e2 = effort(exp, err, T2)
    e4 = effort(exp, err, T4)
    with np.errstate(all="ignore"):
        ratio = err / exp
    lm = np.nanmedian(ratio, axis=0)
    bad = err.ravel() > T4
    return {"points": int(np.isfinite(err).sum()), "mre_px": float(np.nanmean(err)),
            "spearman": spearman(exp.ravel(), err.ravel()),
            "low10_share_of_4mm": capture(exp, err),
            "best10_share_of_4mm": float(min(1.0, 0.1 * np.isfinite(err).sum()
                                             / max(bad.sum(), 1))),
            "effort_2mm": e2, "effort_4mm": e4,
            "median_actual_over_expected": float(np.nanmedian(ratio)),
            "mean_expected_px": float(np.nanmean(exp)),
            "landmarks_ratio_in_range": int(((lm >= 0.67) & (lm <= 1.5)).sum()),
            "per_landmark_ratio": [round(float(x), 2) for x in lm]}


def after_reviews(exp: np.ndarray, err: np.ndarray, n_images: int) -> dict:
    """Review the n images with the largest image expected error (engine.trust), conformal
    scale per landmark from their points, figures on the other images."""
    from lmk_studio.engine import trust

    img = np.array([trust.image_expected_error(e) for e in exp])
    order = np.argsort(-img, kind="stable")
    rev, rest = order[:n_images], order[n_images:]
    m, n = exp.shape
    lm = np.broadcast_to(np.arange(n), (len(rev), n))
    scale = trust.conformal_scale(exp[rev], err[rev], lm, n)
    s = summary(exp[rest] * scale[None], err[rest])
    s["reviewed_images"] = int(n_images)
    return s


# ---- diagnostic on cached candidates ---------------------------------------------------------
def load_candidates() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    z = np.load(CAND_FILE, allow_pickle=False)
    return [str(x) for x in z["names"]], z["points"], z["scores"], z["conf"]


def method_sets(mode: str):
    """(candidate sets, scores, choice) as the product builds them for `mode` (preview: the
    classical preview's six candidates, primary preview; stage1: plus Stage I's two, primary
    Stage I, its preset's margin)."""
    from lmk_studio.engine import candidates as cm

    names, pts, sc, _ = load_candidates()
    keep = [i for i, x in enumerate(names) if mode == "stage1" or not x.startswith("stage1")]
    nm = [names[i] for i in keep]
    primary, margin = ((cm.PREVIEW, cm.DEFAULT_CANDIDATES.margin) if mode == "preview"
                       else ("stage1", 0.1))
    sets = [cm.CandidateSet(list(nm), pts[i][keep], np.zeros((len(keep), pts.shape[2], 2, 2)))
            for i in IDX]
    scores = [sc[i][keep] for i in IDX]
    choice = cm.choose_per_landmark(np.stack(scores), nm, primary, margin)
    return sets, scores, choice


def diagnostic(tr: np.ndarray, fit: bool) -> dict:
    from lmk_studio.engine import candidates as cm
    from lmk_studio.engine import trust

    out: dict = {}
    design: dict[str, list] = {"folder": [], "image": []}
    ys = []
    for mode in ("preview", "stage1"):
        sets, scores, choice = method_sets(mode)
        pts = np.stack([cm.apply_choice(cs, choice) for cs in sets])
        err = np.linalg.norm(pts - tr[IDX], axis=-1)
        fs = [cm.trust_features(cs, choice, sc) for cs, sc in zip(sets, scores, strict=True)]
        feats = np.stack([f for f, _ in fs])
        fold_img = np.stack([g for _, g in fs])
        med = trust.folder_medians(feats)
        img_m = np.where(np.isfinite(fold_img), fold_img, feats)
        fol_m = np.broadcast_to(med, feats.shape)
        design["folder"].append(np.concatenate([feats - fol_m, fol_m], -1))
        design["image"].append(np.concatenate([feats - img_m, img_m], -1))
        ys.append(np.log(err))
        old = None
        if mode == "preview":
            _, _, _, conf = load_candidates()
            # the confidence the preview wrote before engine.trust: its own (flow consistency x
            # NCC) where the preview won, the winner's clipped score elsewhere
            old = conf[IDX].copy()
            for j, k in enumerate(choice.chosen):
                if choice.names[int(k)] not in (cm.PREVIEW, cm.PREVIEW + "+search"):
                    old[:, j] = np.clip([sc[int(k), j] for sc in scores], 0.0, 1.0)
        res = {"mre_px": float(err.mean()), "chosen": [c for c in choice.chosen_names()]}
        variants = {
            "per image (product path today: choice_confidence)":
                np.stack([cm.choice_expected_error(cs, choice, sc)
                          for cs, sc in zip(sets, scores, strict=True)]),
            "folder medians (folder_expected_error; needs the job hook)":
                cm.folder_expected_error(sets, choice, scores)}
        if old is not None:
            variants["before: the preview's own confidence (flow consistency x NCC)"] = \
                trust.expected_from_confidence(old)
        res["variants"] = {}
        for name, exp in variants.items():
            res["variants"][name] = {
                sp: summary(exp[sel], err[sel]) for sp, sel in SPLITS.items()}
            res["variants"][name]["after 3 reviewed images (061-120)"] = after_reviews(
                exp[SPLITS["061-120"]], err[SPLITS["061-120"]], 3)
            res["variants"][name]["after 10 reviewed images (061-120)"] = after_reviews(
                exp[SPLITS["061-120"]], err[SPLITS["061-120"]], 10)
        out[mode] = res
    if fit:
        dev = SPLITS["002-060 (chosen on)"]
        y = np.concatenate([v[dev] for v in ys]).ravel()
        for kind in ("folder", "image"):
            x = np.concatenate([v[dev] for v in design[kind]]).reshape(-1, 6)
            if kind == "image":   # search and shape enter raw (no folder median per image)
                x = np.c_[x[:, 2], x[:, 3] + x[:, 0], x[:, 4] + x[:, 1], x[:, 5]]
            x1 = np.c_[np.ones(len(x)), x]
            w, *_ = np.linalg.lstsq(x1, y, rcond=None)
            # the scale: the median of actual / expected on 002-060 set to 1
            w[0] += float(np.median(y - x1 @ w))
            print(kind, "coefficients (intercept, ...):", np.round(w, 3).tolist())
    return out


# ---- product CSV -----------------------------------------------------------------------------
def score_csv(path: Path, tr: np.ndarray) -> dict:
    from lmk_studio.engine import trust

    m, n = tr.shape[:2]
    pts = np.full((m, n, 2), np.nan)
    exp = np.full((m, n), np.nan)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            if row["status"] != "predicted":
                continue
            i = int(Path(row["image"]).stem) - 1
            j = int(row["landmark_index"])
            if not 0 <= i < m:
                continue
            pts[i, j] = float(row["x_px"]), float(row["y_px"])
            e = row.get("expected_error_px") or ""
            c = row.get("confidence") or ""
            exp[i, j] = (float(e) if e else
                         float(trust.expected_from_confidence(float(c))) if c else np.nan)
    # labelme's corner origin: the project's points are pixel-centre, truth from core.formats too
    err = np.linalg.norm(pts - tr, axis=-1)[IDX]
    exp = exp[IDX]
    have = np.isfinite(err).any(axis=1)
    return {sp: summary(exp[sel & have], err[sel & have]) for sp, sel in SPLITS.items()
            if (sel & have).any()}


# ---- report ----------------------------------------------------------------------------------
def _row(name: str, s: dict) -> str:
    e2, e4 = s["effort_2mm"], s["effort_4mm"]
    return (f"| {name} | {s['points']} | {s['mre_px']:.1f} | {s['spearman']:.2f} | "
            f"{100 * s['low10_share_of_4mm']:.0f} % (best {100 * s['best10_share_of_4mm']:.0f} %)"
            f" | {e2[0]} / {e2[1]:.0f} / {e2[2]} ({e2[0] / max(e2[2], 1):.2f}x) | "
            f"{e4[0]} / {e4[1]:.0f} / {e4[2]} | {s['median_actual_over_expected']:.2f} | "
            f"{s['landmarks_ratio_in_range']} / 19 |")


HEAD = ("| split | points | MRE px | Spearman(E, err) | > 4 mm errors in lowest-conf. 10 % | "
        "opened to 90 % of > 2 mm: queue / random / ideal | > 4 mm: queue / random / ideal | "
        "median actual / expected | landmarks with ratio in [0.67, 1.5] |\n"
        "|---|---|---|---|---|---|---|---|---|")


def report(res: dict, cmd: str) -> str:
    lines = ["# Trust: review effort and calibration (issue 11)", "",
             "Hamedan, exemplar 001, truth = mean of the two doctors, 0.125 mm/px. engine.trust's "
             "coefficients and scale were chosen on 002-060 only; read 061-120 and all.", "",
             f"Command: `{cmd}`", ""]
    for src, body in res.get("product", {}).items():
        lines += [f"## Product path: `{src}`", "",
                  "The exported CSV of a project run through lmk-studio's commands.", "",
                  HEAD] + [_row(sp, s) for sp, s in body.items()] + [""]
    for mode, r in res.get("diagnostic", {}).items():
        lines += [f"## DIAGNOSTIC: {mode} points (engine functions on cached candidates)", "",
                  f"MRE of the chosen points {r['mre_px']:.2f} px; chosen per landmark: "
                  + ", ".join(f"{NAMES[j]}: {c}" for j, c in enumerate(r["chosen"])
                              if c != ("preview" if mode == "preview" else "stage1"))
                  + " (the primary elsewhere).", ""]
        for vname, body in r["variants"].items():
            lines += [f"### {vname}", "", HEAD] + [_row(sp, s) for sp, s in body.items()]
            lm = body["061-120"]["per_landmark_ratio"]
            lines += ["", "Median actual / expected per landmark (061-120): " + ", ".join(
                f"{NAMES[j]} {v:.2f}" for j, v in enumerate(lm)), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fit", action="store_true", help="print coefficients fitted on 002-060")
    ap.add_argument("--csv", nargs="*", default=[], help="exported CSVs of product runs")
    ap.add_argument("--no-report", action="store_true")
    a = ap.parse_args()
    tr = truth()
    res = {"diagnostic": diagnostic(tr, a.fit),
           "product": {str(Path(p).relative_to(REPO) if Path(p).resolve().is_relative_to(REPO)
                           else p): score_csv(Path(p), tr) for p in a.csv}}
    for src, body in res["product"].items():
        print(src)
        for sp, s in body.items():
            print(" ", _row(sp, s))
    for mode, r in res["diagnostic"].items():
        for vname, body in r["variants"].items():
            print(mode, "|", vname)
            for sp, s in body.items():
                print(" ", _row(sp, s))
    if not a.no_report:
        cmd = "nice -n 10 .venv/bin/python training/bench_trust.py" + (
            " --csv " + " ".join(a.csv) if a.csv else "")
        REPORTS.mkdir(exist_ok=True)
        (REPORTS / "trust.json").write_text(json.dumps(res, indent=1))
        (REPORTS / "trust.md").write_text(report(res, cmd))


if __name__ == "__main__":
    main()
