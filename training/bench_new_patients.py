"""New patients after training: seconds to predict ONE new image with each trained method, side
by side with the classical preview in the same run, through the job `lmk-studio predict` runs.

It copies a trained project (default: the one `bench_product.py --inductive` trained on
Hamedan 001-060), then, for each of K new images (061, 062, ...), adds it to the project and runs
`engine.jobs.run_job` - the function behind `lmk-studio predict --images` - once per method:
- preview: "classical" on that image;
- stage2 (start: preview): "predict-stage2" with start="preview" (preview, then Stage II);
- stage2 (start: stage1): "predict-stage2" with start="stage1" (Stage I prediction with its
  test-time adaptation, then Stage II).
Each method gets its own copy of the project, so every image starts without points. Wall time
per call includes loading the image and the model; the process start and `import torch` (paid
once by the CLI, ~2-3 s) are excluded and reported separately. Accuracy on new patients is
bench_product.py --inductive's job (scored from the exported CSV); here only the points placed
are counted, so a method that silently writes nothing cannot look fast.

    nice -n 5 .venv/bin/python training/bench_new_patients.py [--project P] [--k 10] [--threads 2]

Report: training/reports/new_patients.md + .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LMK_HAMEDAN", REPO.parent / "shared" / "data" / "hamedan_ceph"))
DEFAULT_PROJECT = REPO / "training" / "cache" / "product" / "inductive" / "hamedan.lmk"
MM_PER_PX = 0.125
METHODS = {"preview": ("classical", "auto"), "stage2 (start: preview)": ("predict-stage2", "preview"),
           "stage2 (start: stage1)": ("predict-stage2", "stage1")}


def copy_project(src: Path, dst_dir: Path) -> Path:
    """The trained project and its models, copied by the store (as "Save a copy as…" does)."""
    from lmk_studio.core.store import Project

    with Project.open(src) as proj:
        return proj.save_copy(dst_dir / src.name, models=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default=str(DEFAULT_PROJECT))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--first", type=int, default=61)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "training" / "reports" / "new_patients.md"))
    ap.add_argument("--score", action="store_true",
                    help="instead: each Stage II start route on all of 061-120 through "
                    "`lmk-studio predict --images`, scored from `lmk-studio export`")
    a = ap.parse_args()
    if a.score:
        score_routes(Path(a.project), a.first)
        return
    if a.threads:
        os.environ["LMK_STUDIO_THREADS"] = str(a.threads)
    src = Path(a.project)
    if not src.exists():
        raise SystemExit(f"{src}: no trained project; run training/bench_product.py --inductive "
                         "first")
    t0 = time.perf_counter()
    import lmk_studio  # the app's thread policy (OMP_WAIT_POLICY) before torch loads

    print(f"lmk_studio {lmk_studio.__version__}", flush=True)
    import torch  # noqa: F401  (timed: what every `lmk-studio predict` pays once)

    from lmk_studio.core.store import Project
    from lmk_studio.engine.jobs import run_job
    from lmk_studio.engine.threads import apply_thread_policy

    threads = apply_thread_policy(a.threads or None)
    import_s = time.perf_counter() - t0
    names = [f"{i:03d}.png" for i in range(a.first, a.first + a.k)]
    rows, per_method = [], {}
    with tempfile.TemporaryDirectory(prefix="lmk_newpat_") as tmp:
        for m, (job, start) in METHODS.items():
            lmk = copy_project(src, Path(tmp) / m.replace(" ", "_").replace(":", ""))
            times, ids = [], []
            with Project.open(lmk) as proj:
                # the inductive bench already predicted 061-120 in this project: take them out of
                # the copy so each comes in as a new patient (the trained models are unchanged)
                again = [r.id for r in proj.images() if r.name in names]
                if again:
                    proj.remove_images(again)
                for name in names:
                    added = proj.add_images([DATA / "images" / name])
                    if not added:
                        raise SystemExit(f"{name}: could not be added ({proj.last_faults})")
                    iid = added[0].id
                    ids.append(iid)
                    t1 = time.perf_counter()
                    run_job(proj, job, device="cpu", images=[iid], start=start)
                    times.append(time.perf_counter() - t1)
            with Project.open(lmk) as proj:
                got = sum(1 for iid in ids for p in proj.points(iid) if p.placed)
            per_method[m] = times
            rows.append({"method": m, "median_s": float(np.median(times)),
                         "mean_s": float(np.mean(times)), "max_s": float(np.max(times)),
                         "first_s": times[0], "points_placed": got,
                         "points_expected": len(ids) * len(proj.template)})
            print(rows[-1], flush=True)
    write_report(a, rows, threads, import_s, names, src)


def score_routes(src: Path, first: int) -> None:
    """Accuracy of each start route on the new patients, the product path end to end: a copy of
    the trained project without 061-120, `lmk-studio predict COPY --images DIR --start X`, then
    `lmk-studio export --csv`, scored against the two doctors' mean (bench_product's helpers)."""
    import subprocess

    import bench_product as bp

    names_all, truth_all = bp.load_truth()
    new = [f"{i:03d}.png" for i in range(first, 121)]
    idx = [names_all.index(n) for n in new]
    truth = truth_all[idx]
    cli = str(REPO / ".venv" / "bin" / "lmk-studio")
    lines = ["", f"## Accuracy of the start routes on {new[0]}-{new[-1]} (product path)", "",
             "`python training/bench_new_patients.py --score`: a copy of the inductive project "
             "without these images, `lmk-studio predict COPY --images DIR --start ROUTE`, "
             f"`lmk-studio export --csv`; {time.strftime('%Y-%m-%d %H:%M')}.", "",
             "| start route | MRE px | MRE mm | SDR 2 mm % | wall s (60 images, one process) |",
             "|---|---|---|---|---|"]
    from lmk_studio.core.store import Project

    with tempfile.TemporaryDirectory(prefix="lmk_newpat_score_") as tmp:
        folder = Path(tmp) / "new patients"
        bp.link_images(folder, list(range(first, 121)))
        for route in ("preview", "stage1"):
            lmk = copy_project(src, Path(tmp) / route)
            with Project.open(lmk) as proj:
                again = [r.id for r in proj.images() if r.name in new]
                if again:
                    proj.remove_images(again)
            t0 = time.perf_counter()
            subprocess.run([cli, "predict", str(lmk), "--images", str(folder), "--start", route],
                           check=True, capture_output=True)
            wall = time.perf_counter() - t0
            out_csv = Path(tmp) / f"{route}.csv"
            subprocess.run([cli, "export", str(lmk), "--csv", str(out_csv)], check=True,
                           capture_output=True)
            s = bp.score(bp.read_export(out_csv, new), truth, new)
            row = (f"| {route} | {s['mre_px']:.2f} | {s['mre_mm']:.2f} | "
                   f"{s['sdr']['2']:.1f} | {wall:.0f} |")
            print(row, flush=True)
            lines.append(row)
    out = REPO / "training" / "reports" / "new_patients.md"
    text = out.read_text("utf-8")
    marker = "<!-- notes below are kept -->"
    head, _, notes = text.partition(marker)
    head = head.split("\n## Accuracy of the start routes")[0].rstrip("\n")
    out.write_text(head + "\n" + "\n".join(lines) + "\n\n" + marker + notes, "utf-8")


def write_report(a, rows, threads, import_s, names, src) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               "?")
    lines = ["# New patients: seconds per new image (through engine.jobs.run_job)", "",
             f"Command: `python training/bench_new_patients.py --k {a.k}`; project {src.name} "
             f"(trained by bench_product --inductive); images {names[0]}-{names[-1]}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores ({cpu}), torch threads "
             f"{threads}, load average {os.getloadavg()[0]:.1f} (shared machine). "
             f"Process start + imports, paid once per `lmk-studio` call: {import_s:.1f} s.", "",
             "| method | median s / image | mean | max | first (cold) | points placed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['median_s']:.2f} | {r['mean_s']:.2f} | "
                     f"{r['max_s']:.2f} | {r['first_s']:.2f} | "
                     f"{r['points_placed']} / {r['points_expected']} |")
    out = Path(a.out)
    marker = "<!-- notes below are kept -->"
    notes, scored = "", ""
    if out.exists():
        old = out.read_text("utf-8")
        if marker in old:
            old, notes = old.split(marker, 1)
        if "\n## Accuracy of the start routes" in old:  # written by --score: kept
            scored = "\n## Accuracy of the start routes" + old.split(
                "\n## Accuracy of the start routes", 1)[1].rstrip("\n") + "\n"
    out.write_text("\n".join(lines) + "\n" + scored + "\n" + marker + notes, "utf-8")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1), "utf-8")


if __name__ == "__main__":
    main()
