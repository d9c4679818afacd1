"""What the clinician's corrections buy (issue 19): every corrected image is an exemplar.

Through the app's own path only (each step a `lmk-studio` command, as in training/bench_product.py,
whose helpers are imported): a Hamedan project is built with `lmk-studio new` + `import --labelme
... --as exemplar` (001, the doctors' mean), previewed with `predict --method classical`, and
exported; that is k = 0. Then, for each ordering of `lmk-studio suggest-corrections --by
confidence|help`, the reviewer is simulated on a copy of that project: the truth of the first k
images is imported as CORRECTED (`import --labelme DIR --as corrected`), the fused preview is run
again (`predict --method classical`; the trusted images are its sources), optionally the chain
(`train --stage all --preset cpu`, with `--train`), and the export is scored on the images never
corrected, and on the images no ordering corrected (one common set for every row).

    nice -n 10 .venv/bin/python training/bench_corrections.py [--subset 30] [--ks 3 10] [--train]

Report: training/reports/corrections.md + .json (smoke runs with --subset: training/cache/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import bench_product as bp  # noqa: E402  (the product benchmark's helpers, not edited here)

CACHE = REPO / "training" / "cache" / "corrections"
ORDERS = ("confidence", "help")


def truth_labelme(folder: Path, names: list[str], truth_names: list[str],
                  truth: np.ndarray) -> None:
    """labelme files of the truth for `names`, as the reviewer's corrections would read."""
    from lmk_studio.core.formats import LABELME_PIXEL_OFFSET

    folder.mkdir(parents=True)
    for nm in names:
        row = truth[truth_names.index(nm)] - LABELME_PIXEL_OFFSET
        shapes = [{"label": f"l{k + 1}", "points": [[float(x), float(y)]], "group_id": None,
                   "shape_type": "point", "flags": {}} for k, (x, y) in enumerate(row)
                  if np.isfinite(row[k]).all()]
        doc = {"version": "5.0.1", "flags": {}, "shapes": shapes, "imagePath": nm,
               "imageData": None, "imageHeight": 1671, "imageWidth": 1340}
        (folder / f"{Path(nm).stem}.json").write_text(json.dumps(doc))


def copy_project(src: Path, dst: Path) -> None:
    """The project file (the CLI process that wrote it has exited and checkpointed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        s = Path(str(src) + suffix)
        if s.exists():
            shutil.copy2(s, Path(str(dst) + suffix))
    models = src.parent / (src.stem + "_models")
    if models.is_dir():
        shutil.copytree(models, dst.parent / (dst.stem + "_models"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", type=int, default=0, help="first N images only (smoke run)")
    ap.add_argument("--ks", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--train", action="store_true",
                    help="also run `train --stage all --preset cpu` after each correction")
    ap.add_argument("--preset", default="cpu")
    args = ap.parse_args()
    n = args.subset or bp.N_IMAGES
    smoke = bool(args.subset)
    work = CACHE / (f"subset{n}" if smoke else "full")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    env = dict(os.environ)
    ids = list(range(1, n + 1))
    bp.link_images(work / "images", ids)
    names_all, truth_all = bp.load_truth()
    names = [f"{i:03d}.png" for i in ids]
    others = [x for x in names if x != bp.EXEMPLAR]
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    rep: dict[str, Any] = {"command": " ".join(["python training/bench_corrections.py",
                                                *sys.argv[1:]]),
                           "date": started, "git": bp.git_state(), "machine": bp.machine(),
                           "load_avg_start": list(os.getloadavg()), "images": n,
                           "steps": [], "rows": [], "failures": [], "orders": {}}

    def step(name: str, cli: list[str]) -> dict[str, Any]:
        rec = bp.run_step(name, cli, logs, env)
        rep["steps"].append(rec)
        if rec["rc"] != 0:
            rep["failures"].append({"step": name, "rc": rec["rc"], "output": rec["output"]})
        return rec

    def scored(proj: Path, tag: str) -> np.ndarray:
        out_csv = work / f"export_{bp.slug(tag)}.csv"
        step(f"export {tag}", ["export", str(proj), "--csv", str(out_csv)])
        return bp.read_export(out_csv, others)

    truth = truth_all[[names_all.index(x) for x in others]]
    base = work / "base" / "hamedan.lmk"
    base.parent.mkdir()
    step("new", ["new", str(base), "--images", str(work / "images"), "--template", bp.TEMPLATE])
    lab = bp.exemplar_labels(work, "mean")
    step("import exemplar", ["import", str(base), "--labelme", str(lab), "--as", "exemplar"])
    t_base = step("predict classical", ["predict", str(base), "--method", "classical"])
    preds = {("k=0", "-"): (scored(base, "k0"), t_base["wall_s"], set())}
    if args.train:
        t = step("train all k0", ["train", str(base), "--stage", "all", "--preset", args.preset])
        preds[("k=0 + train all", "-")] = (scored(base, "k0_train"), t["wall_s"], set())
    for by in ORDERS:
        js = work / f"order_{by}.json"
        step(f"suggest {by}", ["suggest-corrections", str(base), "--by", by, "--top", "0",
                               "--json", str(js)])
        rep["orders"][by] = [r["name"] for r in json.loads(js.read_text())["order"]]
    for by in ORDERS:
        for k in args.ks:
            chosen = rep["orders"][by][:k]
            proj = work / f"{by}_k{k}" / "hamedan.lmk"
            copy_project(base, proj)
            folder = work / f"{by}_k{k}" / "corrections"
            truth_labelme(folder, chosen, names_all, truth_all)
            step(f"import corrections {by} k={k}", ["import", str(proj), "--labelme",
                                                    str(folder), "--as", "corrected"])
            t = step(f"predict classical {by} k={k}", ["predict", str(proj), "--method",
                                                        "classical"])
            preds[(f"k={k} fused preview", by)] = (scored(proj, f"{by}_k{k}"), t["wall_s"],
                                                   set(chosen))
            if args.train:
                t2 = step(f"train all {by} k={k}", ["train", str(proj), "--stage", "all",
                                                    "--preset", args.preset])
                preds[(f"k={k} + train all", by)] = (scored(proj, f"{by}_k{k}_train"),
                                                     t2["wall_s"], set(chosen))
    every = set().union(*(c for _p, _t, c in preds.values()))
    common = [i for i, x in enumerate(others) if x not in every]
    k0 = preds[("k=0", "-")][0]
    for (row, by), (pred, wall, chosen) in preds.items():
        keep = [i for i, x in enumerate(others) if x not in chosen]
        s_own = bp.score(pred[keep], truth[keep], [others[i] for i in keep])
        s_k0 = bp.score(k0[keep], truth[keep], [others[i] for i in keep])
        s_com = bp.score(pred[common], truth[common], [others[i] for i in common])
        rep["rows"].append({"row": row, "order": by, "corrected": sorted(chosen),
                            "wall_s": wall, "n_scored": len(keep), "own": s_own,
                            "k0_same_images": s_k0, "common": s_com,
                            "n_common": len(common)})
        print(f"[bench] {row} ({by}): {len(keep)} never-corrected images MRE "
              f"{s_own['mre_px']:.2f} px (k=0 on them {s_k0['mre_px']:.2f}), common "
              f"{len(common)}: {s_com['mre_px']:.2f} px", flush=True)
    out_dir = CACHE if smoke else bp.REPORTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "corrections_smoke" if smoke else "corrections"
    (out_dir / f"{stem}.json").write_text(json.dumps(rep, indent=1, default=float))
    (out_dir / f"{stem}.md").write_text(render(rep), encoding="utf-8")
    print(render(rep))
    return 1 if rep["failures"] else 0


def render(rep: dict[str, Any]) -> str:
    """The Markdown table: per row, never-corrected images (vs k = 0 on the same images) and the
    common set, px / mm / SDR 2 mm, and the wall time of the step that made the points."""
    lines = ["# Corrections as exemplars (issue 19): Hamedan, exemplar 001", "",
             f"`{rep['command']}` ({rep['date']}, {rep['images']} images, commit "
             f"{str((rep['git'] or {}).get('commit', '?'))[:10]}, load at start "
             f"{', '.join(f'{x:.1f}' for x in rep['load_avg_start'])}). Truth = mean of the two "
             "doctors; 0.125 mm/px; points from `lmk-studio export --csv`. The reviewer is "
             "simulated by importing the truth of the first k images of "
             "`lmk-studio suggest-corrections --by ORDER` as CORRECTED.", "",
             "| row | order | scored | MRE px | vs k=0 same images | MRE mm | SDR 2 mm | "
             f"common set MRE px (n={rep['rows'][0]['n_common'] if rep['rows'] else 0}) | "
             "wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        o, b, c = r["own"], r["k0_same_images"], r["common"]
        gain = 100.0 * (o["mre_px"] - b["mre_px"]) / b["mre_px"]
        lines.append(f"| {r['row']} | {r['order']} | {r['n_scored']} | {o['mre_px']:.2f} | "
                     f"{b['mre_px']:.2f} -> {o['mre_px']:.2f} ({gain:+.1f} %) | "
                     f"{o['mre_mm']:.2f} | {o['sdr']['2']:.1f} % | {c['mre_px']:.2f} | "
                     f"{r['wall_s']:.0f} |")
    lines += ["", "Orders (first 10):", ""]
    for by, order in rep["orders"].items():
        lines.append(f"- {by}: {', '.join(order[:10])}")
    if rep["failures"]:
        lines += ["", "Failures:", ""] + [f"- {f['step']}: rc {f['rc']}" for f in
                                          rep["failures"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
