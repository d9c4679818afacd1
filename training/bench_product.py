"""The product benchmark: accuracy, time and memory of what a user runs, on the Hamedan dev set.

Why this exists: figures from calling engine functions directly once hid a bug that made every
real `lmk-studio train --preset cpu` fail after 12 minutes (issue 10). So here nothing touches the
engine: the project is made by `lmk-studio new` + `import --labelme`, every step is the
`lmk-studio` command a user types, run as its own subprocess (its own wall time, peak RSS and CPU
seconds), and the figures are scored from the CSV that `lmk-studio export` wrote. The truth (mean
of the two doctors, README protocol) is read through `lmk_studio.core.formats` and the metrics come
from `lmk_studio.core.metrics`, the code behind `lmk-studio evaluate`.

Modes
- ``--transductive`` (default): all images in the project, exemplar 001, the other 119 scored.
  Steps: predict --method classical, train --stage 1 --preset cpu, train --stage 2 --preset cpu,
  each followed by export + score, so the preview / Stage I / Stage II rows come from one run.
- ``--inductive``: the project holds 001-060 and is trained as above; then 061-120 are given to
  ``predict --images DIR2 --method stage2`` (the clinic's "next patients") and scored. The
  classical preview of those new images is scored as their baseline; when Stage II left new
  images without points (issue 18), or with ``--chain``, ``predict --method stage1`` then
  ``--method stage2`` on them follow, as a user would try next. ``--split`` moves the boundary.
- ``--subset N``: N images, step counts unchanged: a smoke run (inductive: the first images of
  each part, in proportion).
  Its report goes to training/cache/product/, never over the committed figures.
- ``--threads N``: OMP_NUM_THREADS / MKL_NUM_THREADS / LMK_STUDIO_THREADS for the app's processes
  (torch reads the first two at start, engine.threads the last; the Stage I preset's
  torch_threads is an upper bound on top). Default: the app's own.
- ``--load``: one ``yes > /dev/null`` beside the whole run, to measure a machine that is not idle.

    nice -n 5 .venv/bin/python training/bench_product.py --transductive [--subset 12] [--load]

Report: training/reports/product.md + .json (one section per mode/load/threads combination; a
rerun replaces its own section; hand-written notes below the marker line are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LMK_HAMEDAN", REPO.parent / "shared" / "data" / "hamedan_ceph"))
CACHE = REPO / "training" / "cache" / "product"
REPORTS = REPO / "training" / "reports"
CLI = REPO / ".venv" / "bin" / "lmk-studio"
TEMPLATE = "isbi2015-ceph-19"
MM_PER_PX = 0.125  # the README's estimate from the nasion-rod ruler
N_IMAGES = 120  # the development split; no other Hamedan images are used anywhere
EXEMPLAR = "001.png"
DOCTORS = ("Dr.mollabashi", "Dr.farhadifar")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LMK_STUDIO_THREADS", "OMP_WAIT_POLICY")
NOTES_MARK = "<!-- notes below are hand-written and kept when the bench rewrites the table -->"


# ---- running one user step -------------------------------------------------------------------
def slug(name: str) -> str:
    """A step name as a file name (no spaces, so the logged commands paste into a shell)."""
    return "".join(c if c.isalnum() else "_" for c in name)


def visible_lines(text: str) -> list[str]:
    """What a terminal would show: the CLI rewrites its progress bar with \\r, so each line is
    its last \\r-segment; bar lines ("[###---]") are dropped, messages kept."""
    out = []
    for line in text.splitlines():
        seg = line.split("\r")[-1].strip()
        if seg and not ("[" in seg and "%" in seg and ("#" in seg or "-]" in seg)):
            out.append(seg)
    return out


def app_state() -> str:
    """The app code a step ran: the commit, plus a hash of the uncommitted lmk_studio/ edits.

    Others edit the engine while long runs go on and the venv's install is editable, so two
    steps of one run may not run the same code; this makes that visible per step.
    """
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short=10", "HEAD").strip()
    diff = git("diff", "HEAD", "--", "lmk_studio")
    new = git("ls-files", "--others", "--exclude-standard", "--", "lmk_studio").split()
    blob = diff + "".join(p + (REPO / p).read_text(errors="replace") for p in new
                          if (REPO / p).is_file())
    if not blob:
        return head
    import hashlib

    return f"{head}+dirty:{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def run_step(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one `lmk-studio` command as a child; wall time, and its own rusage via wait4.

    wait4 on the child's pid gives that child's peak RSS and CPU seconds alone (RUSAGE_CHILDREN
    would give the maximum over every child so far, so a later, smaller step would be hidden).
    """
    cmd = [str(CLI), *args]
    log = log_dir / f"{slug(name)}.log"
    print(f"[bench] {name}: lmk-studio {' '.join(args)}", flush=True)
    code = app_state()
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    text = log.read_text(encoding="utf-8", errors="replace")
    lines = visible_lines(text)
    rec = {"name": name, "command": "lmk-studio " + " ".join(args), "rc": p.returncode,
           "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024.0,
           "cpu_s": ru.ru_utime + ru.ru_stime, "app": code, "output": lines[-12:]}
    print(f"[bench] {name}: rc {p.returncode}, {wall:.1f} s, peak RSS "
          f"{rec['peak_rss_mb']:.0f} MB, CPU {rec['cpu_s']:.0f} s", flush=True)
    for line in lines[-6:]:
        print(f"    | {line}", flush=True)
    return rec


# ---- truth and scoring -----------------------------------------------------------------------
def load_truth() -> tuple[list[str], np.ndarray]:
    """Two-doctor mean per README protocol, store pixel convention, through core.formats."""
    from lmk_studio.core.formats import hamedan_truth

    names, truth, _faults = hamedan_truth(DATA)
    return list(names), np.asarray(truth, dtype=np.float64)


def doctor_points() -> list[np.ndarray]:
    """Each doctor alone (NaN where the file is faulty), for the inter-observer reference row."""
    from lmk_studio.core.formats import average_labelme_truth

    stems = [f"{i:03d}" for i in range(1, N_IMAGES + 1)]
    return [average_labelme_truth([DATA / "annotations" / d], [f"l{k}" for k in range(1, 20)],
                                  stems)[1] for d in DOCTORS]


def read_export(csv_path: Path, names: list[str]) -> np.ndarray:
    """(len(names), 19, 2) from an exported project CSV (read by core.formats); NaN if absent."""
    from lmk_studio.core.formats import read_points_table
    from lmk_studio.core.templates import load_template

    table, _faults = read_points_table(csv_path, load_template(TEMPLATE))
    out = np.full((len(names), 19, 2), np.nan)
    for i, n in enumerate(names):
        if n in table:
            out[i] = table[n]
    return out


def score(pred: np.ndarray, truth: np.ndarray, names: list[str]) -> dict[str, Any]:
    """core.metrics figures (mm at 0.125 mm/px, px beside) plus p95 and per-landmark px MRE."""
    from lmk_studio.core.metrics import evaluate_points
    from lmk_studio.core.templates import load_template

    lm = load_template(TEMPLATE).names
    rep = evaluate_points(pred, truth, MM_PER_PX, names=lm, image_names=names)
    e_mm = rep.errors[np.isfinite(rep.errors)]
    images_with_points = int(np.isfinite(pred).all(axis=-1).any(axis=1).sum())
    return {
        "n_images": rep.n_images, "images_with_points": images_with_points,
        "n_evaluated": rep.n_evaluated, "n_missing_pred": rep.n_missing_pred,
        "mre_px": rep.mre_px, "sd_px": rep.sd_px, "mre_mm": rep.mre, "sd_mm": rep.sd,
        "median_px": rep.median / MM_PER_PX if e_mm.size else None,
        "median_mm": rep.median if e_mm.size else None,
        "p95_px": float(np.percentile(e_mm, 95)) / MM_PER_PX if e_mm.size else None,
        "p95_mm": float(np.percentile(e_mm, 95)) if e_mm.size else None,
        "sdr": {f"{k:g}": v for k, v in rep.sdr.items()},
        "per_landmark_px": [s.mre_px for s in rep.per_landmark],
        "landmarks": lm,
    }


# ---- project set-up --------------------------------------------------------------------------
def link_images(folder: Path, ids: list[int]) -> None:
    """A folder of symlinks: the user's folder of X-rays, without copying 120 x 2 MB."""
    folder.mkdir(parents=True)
    for i in ids:
        (folder / f"{i:03d}.png").symlink_to(DATA / "images" / f"{i:03d}.png")


def exemplar_labels(work: Path, which: str) -> Path:
    """The labelme file to import as the exemplar.

    A project has one exemplar point per landmark, and a second `import --as exemplar` replaces
    the first (checked: "19 existing point(s) replaced"), so both doctors' files cannot both be
    imported. 'mean' writes a labelme file of 001 holding the two doctors' mean (what a careful
    clinic would label, and what the earlier benchmarks used as the exemplar); a doctor's name
    imports that doctor's own file unchanged.
    """
    if which != "mean":
        return DATA / "annotations" / which / "001.json"
    from lmk_studio.core.formats import LABELME_PIXEL_OFFSET

    names, truth = load_truth()
    src = json.loads((DATA / "annotations" / DOCTORS[0] / "001.json").read_text())
    row = truth[names.index(EXEMPLAR)] - LABELME_PIXEL_OFFSET  # back to labelme's corner origin
    src["shapes"] = [{"label": f"l{k + 1}", "points": [[float(x), float(y)]], "group_id": None,
                      "shape_type": "point", "flags": {}} for k, (x, y) in enumerate(row)]
    src["imagePath"] = EXEMPLAR
    out = work / "labels" / "001.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(src, indent=1))
    return out


# ---- the run ---------------------------------------------------------------------------------
def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """All steps of one mode; returns the report section (steps, scored rows, failures).

    ``save`` is called with the section after every step, so a run stopped after an hour still
    leaves the figures of the steps it finished in the report.
    """
    mode = "inductive" if args.inductive else "transductive"
    n = args.subset or N_IMAGES
    if mode == "inductive":  # subset: the first n/2 of each part, so both stay in proportion
        k = args.split * n // N_IMAGES
        train_ids = list(range(1, k + 1))
        new_ids = list(range(args.split + 1, args.split + 1 + n - k))
    else:
        train_ids, new_ids = list(range(1, n + 1)), []
    work = CACHE / section_key(args)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    link_images(work / "images", train_ids)
    if new_ids:
        link_images(work / "new_images", new_ids)
    proj = work / "hamedan.lmk"
    env = dict(os.environ)
    if args.threads:  # torch reads OMP/MKL at start; engine.threads reads LMK_STUDIO_THREADS
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LMK_STUDIO_THREADS"):
            env[var] = str(args.threads)

    names_all, truth_all = load_truth()
    train_names = [f"{i:03d}.png" for i in train_ids if i != 1]
    new_names = [f"{i:03d}.png" for i in new_ids]
    t_train = truth_all[[names_all.index(x) for x in train_names]]
    t_new = truth_all[[names_all.index(x) for x in new_names]] if new_names else None
    sets = {"train": (train_names, t_train)}
    if new_names:
        sets["new"] = (new_names, t_new)

    sec: dict[str, Any] = {"mode": mode, "subset": args.subset, "load": args.load,
                           "threads": args.threads, "exemplar_labels": args.exemplar_labels,
                           "preset": args.preset, "train_images": f"{train_ids[0]:03d}-"
                           f"{train_ids[-1]:03d}", "new_images": (f"{new_ids[0]:03d}-"
                           f"{new_ids[-1]:03d}" if new_ids else None),
                           "steps": [], "rows": [], "failures": [], "workdir": str(work),
                           "complete": False,
                           "thread_env": {v: env.get(v) for v in THREAD_VARS}}
    load_proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if args.load else None
    t_run = time.monotonic()
    try:
        def step(name: str, cli_args: list[str], score_as: str | None = None,
                 sets_to_score: tuple[str, ...] = ("train",)) -> dict[str, Any]:
            try:
                return _step(name, cli_args, score_as, sets_to_score)
            finally:
                sec["total_wall_s"] = time.monotonic() - t_run
                save(sec)

        def _step(name: str, cli_args: list[str], score_as: str | None,
                  sets_to_score: tuple[str, ...]) -> dict[str, Any]:
            rec = run_step(name, cli_args, logs, env)
            sec["steps"].append(rec)
            if rec["rc"] != 0:
                sec["failures"].append({"step": name, "command": rec["command"], "rc": rec["rc"],
                                        "output": rec["output"]})
            if score_as is not None:
                out_csv = work / f"export_{slug(name)}.csv"
                ex = run_step(f"export after {name}", ["export", str(proj), "--csv", str(out_csv)],
                              logs, env)
                sec["steps"].append(ex)
                if ex["rc"] != 0:
                    sec["failures"].append({"step": ex["name"], "command": ex["command"],
                                            "rc": ex["rc"], "output": ex["output"]})
                    return rec
                for s in sets_to_score:
                    nm, tr = sets[s]
                    m = score(read_export(out_csv, nm), tr, nm)
                    sec["rows"].append({"row": score_as, "set": s, "step": name,
                                        "wall_s": rec["wall_s"],
                                        "peak_rss_mb": rec["peak_rss_mb"], **m})
                    print(f"[bench] {score_as} on {s} ({len(nm)} images): MRE "
                          f"{m['mre_px']:.2f} px / {m['mre_mm']:.2f} mm, SDR2 "
                          f"{m['sdr']['2']:.1f} %, {m['images_with_points']} images with points",
                          flush=True)
            return rec

        step("new", ["new", str(proj), "--images", str(work / "images"), "--template", TEMPLATE])
        lab = exemplar_labels(work, args.exemplar_labels)
        step("import exemplar", ["import", str(proj), "--labelme", str(lab), "--as", "exemplar"])
        # the exemplar's own points, copied to every image: the "no registration" floor
        ex_csv = work / "export_exemplar.csv"
        step("export exemplar", ["export", str(proj), "--csv", str(ex_csv)])
        ex_pts = read_export(ex_csv, [EXEMPLAR])[0]
        for s, (nm, tr) in sets.items():
            sec["rows"].append({"row": "exemplar copied (no registration)", "set": s,
                                "step": None, "wall_s": None, "peak_rss_mb": None,
                                **score(np.broadcast_to(ex_pts, tr.shape).copy(), tr, nm)})
        step("predict classical", ["predict", str(proj), "--method", "classical"],
             "classical preview")
        step("train stage 1", ["train", str(proj), "--stage", "1", "--preset", args.preset],
             "Stage I")
        step("train stage 2", ["train", str(proj), "--stage", "2", "--preset", args.preset],
             "Stage II")
        if new_ids:
            nd = str(work / "new_images")
            step("predict stage2 new", ["predict", str(proj), "--images", nd, "--method",
                                        "stage2"], "Stage II predict --images (new)",
                 ("train", "new"))
            row = sec["rows"][-1] if sec["rows"][-1]["set"] == "new" else None
            missing = row is None or row["images_with_points"] < len(new_names)
            step("predict classical new", ["predict", str(proj), "--images", nd, "--method",
                                           "classical"], "classical preview (new)", ("new",))
            if missing or args.chain:
                step("predict stage1 new", ["predict", str(proj), "--images", nd, "--method",
                                            "stage1"], "Stage I predict --images (new)",
                     ("train", "new"))
                step("predict stage2 new again", ["predict", str(proj), "--images", nd,
                                                  "--method", "stage2"],
                     "Stage II predict --images after Stage I (new)", ("train", "new"))
        step("info", ["info", str(proj)])
    finally:
        if load_proc is not None:
            load_proc.kill()
            load_proc.wait()
    sec["total_wall_s"] = time.monotonic() - t_run
    d = doctor_points()
    for s, (nm, _tr) in sets.items():
        idx = [names_all.index(x) for x in nm]
        sec["rows"].append({"row": "the two doctors against each other", "set": s, "step": None,
                            "wall_s": None, "peak_rss_mb": None,
                            **score(d[0][idx], d[1][idx], nm)})
    sec["complete"] = True
    return sec


# ---- machine and report ----------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """Enough to tell this machine's figures from another's: cores, CPU model, load, versions."""
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "nproc": nproc, "os_cpu_count": os.cpu_count(),
            "load_avg": list(os.getloadavg()), "python": platform.python_version(),
            "platform": platform.platform(),
            "shared": "shared with other agents' processes (2 cores for 5 agents)"}


def git_state() -> dict[str, Any]:
    """The commit, and the app files that differed from it: the venv's install is editable, so
    uncommitted edits by others to lmk_studio/ are part of what was measured."""
    def git(*a: str) -> str:  # not stripped: porcelain lines start with a status column
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout

    return {"commit": git("rev-parse", "HEAD").strip(),
            "subject": git("log", "-1", "--format=%s").strip()[:120],
            "app_changes": git("status", "--porcelain", "--", "lmk_studio").splitlines()}


def section_key(args: argparse.Namespace) -> str:
    """One report section per mode / load / threads / subset combination."""
    k = "inductive" if args.inductive else "transductive"
    if args.load:
        k += "-load"
    if args.threads:
        k += f"-threads{args.threads}"
    if args.inductive and args.split != 60:
        k += f"-split{args.split}"
    if args.preset != "cpu":
        k += f"-{Path(args.preset).stem}"
    if args.exemplar_labels != "mean":
        k += f"-{args.exemplar_labels}"
    if args.subset:
        k += f"-subset{args.subset}"
    return k


def _f(v: Any, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def render(rep: dict[str, Any]) -> str:
    """Markdown of every section in the JSON: summary table, steps, per-landmark, failures."""
    lines = ["# The product path on Hamedan (what `lmk-studio` users run)", "",
             "Every figure here comes from a project built with `lmk-studio new` + "
             "`import --labelme`, the `lmk-studio predict` / `train` commands, each run as its "
             "own process, and the CSV written by `lmk-studio export`, scored against the mean "
             "of the two doctors (README protocol, exemplar 001, 0.125 mm/px estimate) with "
             "`lmk_studio.core.metrics`. Written by `training/bench_product.py`.", ""]
    for key, sec in rep["sections"].items():
        m, g = sec["machine"], sec["git"]
        lines += [f"## {key}", ""]
        if not sec.get("complete"):
            lines += ["**Incomplete: the run was stopped or is still running; the rows below are "
                      "the steps it finished.**", ""]
        lines += [
                  f"Command: `{sec['command']}`  ",
                  f"Date: {sec['date']}; commit {g['commit'][:10]} ({g['subject']})"
                  + (f"; uncommitted app files at run time: {', '.join(c[3:] for c in g['app_changes'])}"
                     if g["app_changes"] else "") + "  ",
                  f"Machine: {m['cpu']}, nproc {m['nproc']}, {m['shared']}; load average at start "
                  f"{', '.join(f'{x:.1f}' for x in sec['load_avg_start'])}, at end "
                  f"{', '.join(f'{x:.1f}' for x in m['load_avg'])}"
                  + ("; one `yes > /dev/null` running beside the whole run" if sec["load"]
                     else "") + "  ",
                  f"Project: training images {sec['train_images']}"
                  + (f", new images {sec['new_images']} given to `predict --images`"
                     if sec["new_images"] else "")
                  + f"; exemplar 001 labels: {sec['exemplar_labels']}"
                  + " (the two doctors' mean written as a labelme file and imported; a project "
                    "holds one exemplar point per landmark, so both doctors' files cannot both be "
                    "imported)" * (sec["exemplar_labels"] == "mean")
                  + f"; preset {sec['preset']}; threads {sec['threads'] or 'app default'}"
                  + "".join(f", {k}={v}" for k, v in sec.get("thread_env", {}).items() if v)
                  + f"; total {sec['total_wall_s'] / 60:.1f} min.",
                  "",
                  "| row | images scored | MRE px | SD px | median px | p95 px | MRE mm | SD mm | "
                  "SDR 2 / 2.5 / 3 / 4 mm % | step time s | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            sdr = " / ".join(_f(r["sdr"][t], 1) for t in ("2", "2.5", "3", "4"))
            miss = f" ({r['n_missing_pred']} pts missing)" if r["n_missing_pred"] else ""
            lines.append(
                f"| {r['row']} | {r['set']}: {r['images_with_points']}/{r['n_images']}{miss}"
                f" | {_f(r['mre_px'])} | {_f(r['sd_px'], 1)} | {_f(r['median_px'], 1)} | "
                f"{_f(r['p95_px'], 1)} | {_f(r['mre_mm'])} | {_f(r['sd_mm'])} | {sdr} | "
                f"{_f(r['wall_s'], 0)} | {_f(r['peak_rss_mb'], 0)} |")
        lines += ["", "Steps (each its own process; wall time, peak RSS and CPU seconds of that "
                      "process alone):", "",
                  "| step | command | exit | wall s | peak RSS MB | CPU s | app code | last line |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in sec["steps"]:
            last = (s["output"][-1] if s["output"] else "").replace("|", "\\|")[:140]
            cmd = s["command"].replace(str(REPO) + "/", "")
            lines.append(f"| {s['name']} | `{cmd}` | {s['rc']} | {s['wall_s']:.1f} | "
                         f"{s['peak_rss_mb']:.0f} | {s['cpu_s']:.0f} | {s.get('app', '')} | "
                         f"{last} |")
        for set_name in dict.fromkeys(r["set"] for r in sec["rows"]):
            rows = [r for r in sec["rows"] if r["set"] == set_name]
            lms = rows[0]["landmarks"]
            lines += ["", f"Per-landmark MRE (px), set '{set_name}':", "",
                      "| landmark | " + " | ".join(r["row"] for r in rows) + " |",
                      "|---|" + "---|" * len(rows)]
            for j, nm in enumerate(lms):
                lines.append(f"| {j + 1} {nm} | "
                             + " | ".join(_f(r["per_landmark_px"][j], 1) for r in rows) + " |")
        if sec["failures"]:
            lines += ["", "Failures (exact output):", ""]
            for fl in sec["failures"]:
                lines += [f"- `{fl['command'].replace(str(REPO) + '/', '')}` exited {fl['rc']}:",
                          "", "```", *fl["output"], "```"]
        lines.append("")
    return "\n".join(lines)


def report_paths(smoke: bool) -> tuple[Path, Path]:
    """Smoke runs report into the cache so they never replace the committed figures."""
    out_dir = CACHE if smoke else REPORTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "product_smoke" if smoke else "product"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def write_report(key: str | None, sec: dict[str, Any] | None, smoke: bool) -> str:
    """Merge this run's section into the JSON (None: only re-render), re-render the Markdown,
    keep the notes below the marker; returns the Markdown above the notes."""
    js, md = report_paths(smoke)
    rep = json.loads(js.read_text()) if js.exists() else {"sections": {}}
    if key is not None and sec is not None:
        rep["sections"][key] = sec
        js.write_text(json.dumps(rep, indent=1, default=float))
    old = md.read_text(encoding="utf-8") if md.exists() else ""
    extra = old[old.index(NOTES_MARK):] if NOTES_MARK in old else NOTES_MARK + "\n"
    text = render(rep)
    md.write_text(text + "\n" + extra, encoding="utf-8")
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--transductive", action="store_true", help="all images, exemplar 001 (default)")
    g.add_argument("--inductive", action="store_true",
                   help="train on 001-060, predict 061-120 with predict --images")
    ap.add_argument("--subset", type=int, default=0,
                    help="smoke run on the first N images (inductive: N/2 + N/2)")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS/MKL_NUM_THREADS for the app (0: the app's default)")
    ap.add_argument("--load", action="store_true",
                    help="run one `yes > /dev/null` beside the whole run")
    ap.add_argument("--split", type=int, default=60,
                    help="inductive: train on 001..SPLIT, predict SPLIT+1..120 (default 60; the "
                         "dataset README's protocol names 90)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--exemplar-labels", default="mean", choices=["mean", *DOCTORS],
                    help="labels of 001 to import as the exemplar (default: the doctors' mean)")
    ap.add_argument("--chain", action="store_true",
                    help="inductive: also predict stage1 then stage2 on the new images even when "
                         "Stage II alone predicted them all")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the Markdown from the JSON (after a fix to the layout)")
    args = ap.parse_args()
    if args.subset and not 4 <= args.subset <= N_IMAGES:
        ap.error("--subset must be between 4 and 120")
    if not 2 <= args.split < N_IMAGES:
        ap.error("--split must be between 2 and 119")
    if not (DATA / "images" / "001.png").is_file():
        print(f"Hamedan development set not found in {DATA}", file=sys.stderr)
        return 2
    if args.render_only:
        print(write_report(None, None, smoke=bool(args.subset)))
        return 0
    load_start = list(os.getloadavg())
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    git = git_state()  # before the run: what was measured, not what others changed meanwhile

    def save(sec: dict[str, Any]) -> None:
        sec.update({"command": " ".join(["python training/bench_product.py", *sys.argv[1:]]),
                    "date": started, "load_avg_start": load_start, "machine": machine(),
                    "git": git})
        write_report(section_key(args), sec, smoke=bool(args.subset))

    sec = run(args, save)
    save(sec)
    print(write_report(None, None, smoke=bool(args.subset)))
    return 1 if sec["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
