"""Stage I benchmark on the Hamedan development protocol (transductive, exemplar 001).

Side by side in one run: identity (the exemplar's points copied), the classical preview
(engine.classical.classical_propagate; a stand-in while that module is absent) and learned
Stage I (engine.stage1.fit_stage1 at a preset, started from the classical points as the cpu
preset does). Each method runs in its own child process so its wall time and peak RSS are its
own; images are loaded the way the product loads them (engine.stage1.job.load_normalized).

    nice -n 10 .venv/bin/python training/bench_stage1.py [--preset cpu] [--reuse]
        [--override '{"refine": {"epochs": 40}}'] [--tag NAME]

--reuse takes the classical points from a previous run's cache (same source); the learned stage
is always retrained unless --reuse-learned. --override merges into the preset (dev runs;
the report records it). --no-report prints the table without writing training/reports/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LMK_HAMEDAN", REPO.parent / "shared" / "data" / "hamedan_ceph"))
CACHE = REPO / "training" / "cache"
REPORTS = REPO / "training" / "reports"
MM_PER_PX = 0.125
N_LM = 19
THRESH = (2.0, 2.5, 3.0, 4.0)
NOTES_MARK = "<!-- notes below are hand-written and kept when the bench rewrites the table -->"
NAMES = ["sella", "nasion", "orbitale", "porion", "subspinale (A)", "supramentale (B)",
         "pogonion", "menton", "gnathion", "gonion", "lower incisal incision",
         "upper incisal incision", "upper lip", "lower lip", "subnasale", "soft-tissue pogonion",
         "posterior nasal spine", "anterior nasal spine", "articulare"]


# ---- data ------------------------------------------------------------------------------------
def load_truth() -> tuple[np.ndarray, str]:
    """GT = mean of the two doctors; the sound doctor where one is faulty (README protocol)."""
    from lmk_studio.core.formats import hamedan_truth

    return np.asarray(hamedan_truth(DATA)[1], dtype=np.float64), "core.formats.hamedan_truth"


def image_paths() -> list[Path]:
    return [DATA / "images" / f"{i:03d}.png" for i in range(1, 121)]


def load_images() -> list[np.ndarray]:
    from lmk_studio.engine.stage1.job import load_normalized

    return [load_normalized(p) for p in image_paths()]


def classical_source() -> str:
    try:
        from lmk_studio.engine.classical import classical_propagate  # noqa: F401

        return "engine.classical.classical_propagate"
    except ImportError:
        return "bench stand-in (ECC affine + NCC patches, from bench_stage2)"


# ---- metrics ---------------------------------------------------------------------------------
def metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Images 002..120 (the exemplar excluded)."""
    e = np.linalg.norm(pred[1:] - truth[1:], axis=-1)          # (119, 19)
    ok = np.isfinite(e)
    mm = e[ok] * MM_PER_PX
    with np.errstate(all="ignore"):
        per = np.nanmean(np.where(ok, e, np.nan), axis=0)
    return {"n_points": int(ok.sum()), "missing": int((~ok).sum()),
            "mre_px": float(e[ok].mean()), "sd_px": float(e[ok].std()),
            "median_px": float(np.median(e[ok])),
            "mre_mm": float(mm.mean()), "sd_mm": float(mm.std()),
            "sdr": {f"{t:g}": float((mm <= t).mean() * 100) for t in THRESH},
            "per_landmark_px": [float(x) for x in per]}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- children --------------------------------------------------------------------------------
def child_classical(out: Path) -> None:
    import cv2

    cv2.setNumThreads(2)
    truth, _ = load_truth()
    t0 = time.monotonic()
    imgs = load_images()
    t_load = time.monotonic() - t0
    try:
        from lmk_studio.engine.classical import classical_propagate as fn
    except ImportError:
        sys.path.insert(0, str(REPO / "training"))
        from bench_stage2 import _standin_propagate as fn
    pts = np.full((120, N_LM, 2), np.nan)
    conf = np.full((120, N_LM), np.nan)
    pts[0] = truth[0]
    conf[0] = 1.0
    per = []
    t1 = time.monotonic()
    for k in range(1, 120):
        ti = time.monotonic()
        r = fn(imgs[0], truth[0], imgs[k])
        if isinstance(r, tuple):
            pts[k], conf[k] = r[0], r[1]
        else:
            pts[k] = r
        per.append(time.monotonic() - ti)
    np.savez(out, pts=pts, conf=conf, info=json.dumps({
        "source": classical_source(), "load_s": t_load, "propagate_s": time.monotonic() - t1,
        "per_image_s_median": float(np.median(per)), "peak_rss_mb": rss_mb()}))


def child_stage1(out: Path, preset: str, override: dict, seed: int, start: Path) -> None:
    import torch

    from lmk_studio.engine.common import seed_everything
    from lmk_studio.engine.stage1.config import Stage1Config, load_preset
    from lmk_studio.engine.stage1.pipeline import fit_stage1

    torch.set_num_threads(2)
    cfg = load_preset(preset)
    d = cfg.to_dict()
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k].update(v)
        else:
            d[k] = v
    cfg = Stage1Config.from_dict(d)
    truth, _ = load_truth()
    t0 = time.monotonic()
    imgs = load_images()
    t_load = time.monotonic() - t0
    z = np.load(start, allow_pickle=True)
    start_pts = z["pts"]
    steps: dict[str, list[float]] = {}

    last = [0.0]

    def progress(ev) -> None:
        if ev.losses:
            steps.setdefault(ev.stage, []).append(time.monotonic())
        if time.monotonic() - last[0] > 60:          # a heartbeat in the log
            last[0] = time.monotonic()
            print(f"[stage1 child] {ev.stage} epoch {ev.epoch + 1}/{ev.epochs} step "
                  f"{ev.step}/{ev.steps} {ev.message}", file=sys.stderr, flush=True)

    seed_everything(seed)
    t1 = time.monotonic()
    # truth[0] = the exemplar's labels: the only labels the method sees
    res = fit_stage1(imgs, 0, truth[0], cfg, seed=seed, device="cpu", progress=progress,
                     start_points=start_pts if cfg.start == "classical" else None)
    wall = time.monotonic() - t1
    s_per_step = {k: float(np.median(np.diff(v))) for k, v in steps.items() if len(v) > 2}
    n_steps = {k: len(v) for k, v in steps.items()}
    np.savez(out, pts=res.points, conf=res.confidence, dis=res.step_disagreement_px,
             start=res.start_points if res.start_points is not None else res.points,
             info=json.dumps({"config": cfg.to_dict(), "load_s": t_load, "fit_s": wall,
                              "timings": res.timings, "notes": res.notes,
                              "history": res.history, "s_per_step": s_per_step,
                              "steps": n_steps, "peak_rss_mb": rss_mb(), "seed": seed},
                             default=float))


def run_child(args: list[str]) -> None:
    cmd = [sys.executable, __file__, *args]
    print(f"[bench] {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


# ---- main ------------------------------------------------------------------------------------
def machine() -> dict:
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": 2,
            "python": platform.python_version(), "loadavg_at_end": load}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["classical", "stage1"])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--override", default="{}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--start")
    ap.add_argument("--tag", default="")
    ap.add_argument("--reuse", action="store_true", help="reuse cached classical points")
    ap.add_argument("--reuse-learned", action="store_true",
                    help="reuse the cached learned result of the same tag (report rewrite)")
    ap.add_argument("--no-report", action="store_true")
    a = ap.parse_args()
    if a.child == "classical":
        child_classical(Path(a.out))
        return
    if a.child == "stage1":
        child_stage1(Path(a.out), a.preset, json.loads(a.override), a.seed, Path(a.start))
        return

    t_start = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    truth, truth_src = load_truth()
    src = classical_source()
    cpath = CACHE / ("stage1_classical_engine.npz" if src.startswith("engine")
                     else "stage1_classical_standin.npz")
    if not (a.reuse and cpath.exists()):
        run_child(["--child", "classical", "--out", str(cpath)])
    cz = np.load(cpath, allow_pickle=True)
    cinfo = json.loads(str(cz["info"]))
    tag = a.tag or a.preset
    lpath = CACHE / f"stage1_learned_{tag}.npz"
    if not (a.reuse_learned and lpath.exists()):
        run_child(["--child", "stage1", "--out", str(lpath), "--preset", a.preset,
                   "--override", a.override, "--seed", str(a.seed), "--start", str(cpath)])
    lz = np.load(lpath, allow_pickle=True)
    linfo = json.loads(str(lz["info"]))

    ident = np.repeat(truth[:1], 120, 0)
    rep: dict = {"protocol": "Hamedan dev, transductive, exemplar 001 (labels of 001 only), "
                             "119 images predicted, GT = mean of the two doctors "
                             f"({truth_src}), {MM_PER_PX} mm/px (estimate from the ruler)",
                 "preset": a.preset, "override": json.loads(a.override), "seed": a.seed,
                 "machine": machine(), "methods": {}}
    rep["methods"]["identity"] = {**metrics(ident, truth), "time_s": 0.0}
    rep["methods"]["classical preview"] = {
        **metrics(cz["pts"], truth), "source": cinfo["source"],
        "time_s": cinfo["propagate_s"], "load_s": cinfo["load_s"],
        "per_image_s": cinfo["per_image_s_median"], "peak_rss_mb": cinfo["peak_rss_mb"]}
    if "start" in lz.files and linfo["config"].get("consensus", {}).get("k", 0) \
            and linfo["config"]["consensus"].get("when", "start") == "start":
        rep["methods"]["ablation: classical + consensus, no learning"] = {
            **metrics(lz["start"], truth),
            "time_s": cinfo["propagate_s"] + linfo["timings"].get("consensus_s", 0.0)}
    learned = metrics(lz["pts"], truth)
    err = np.linalg.norm(lz["pts"][1:] - truth[1:], axis=-1).ravel()
    conf = lz["conf"][1:].ravel()
    ok = np.isfinite(err) & np.isfinite(conf)
    learned["confidence_spearman_vs_error"] = spearman(conf[ok], err[ok])
    rep["methods"][f"learned Stage I ({a.preset})"] = {
        **learned, "time_s": linfo["fit_s"] + cinfo["propagate_s"],
        "train_predict_s": linfo["fit_s"], "load_s": linfo["load_s"],
        "peak_rss_mb": linfo["peak_rss_mb"], "s_per_step": linfo["s_per_step"],
        "steps": linfo["steps"], "timings": linfo["timings"], "notes": linfo["notes"],
        "history": linfo["history"], "config": linfo["config"]}
    rep["total_wall_s"] = time.monotonic() - t_start
    table = format_report(rep)
    print(table)
    if not a.no_report:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "stage1.json").write_text(json.dumps(rep, indent=2, default=float) + "\n",
                                             encoding="utf-8")
        md = REPORTS / "stage1.md"
        old = md.read_text(encoding="utf-8") if md.exists() else ""
        extra = old[old.index(NOTES_MARK):] if NOTES_MARK in old else ""
        md.write_text(table + "\n" + extra, encoding="utf-8")


def format_report(rep: dict) -> str:
    ov = f" --override '{json.dumps(rep['override'])}'" if rep["override"] else ""
    m = rep["machine"]
    key = [n for n in rep["methods"] if n.startswith("learned")][0]
    lines = ["# Stage I (EGT) on Hamedan — development protocol", "",
             f"Command: `nice -n 10 .venv/bin/python training/bench_stage1.py --preset "
             f"{rep['preset']}{ov}`  ",
             f"Protocol: {rep['protocol']}.  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, no GPU, torch threads "
             f"{rep['methods'][key]['config']['torch_threads']}; shared with "
             f"other jobs (load average at the end {m['loadavg_at_end']}).  ",
             f"Seed {rep['seed']}. Total benchmark wall time {rep['total_wall_s'] / 60:.1f} min.", "",
             "| method | MRE px | SD px | median px | MRE mm | SD mm | SDR 2/2.5/3/4 mm % "
             "| time s | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rep["methods"].items():
        sdr = " / ".join(f"{r['sdr'][f'{t:g}']:.1f}" for t in THRESH)
        label = f"{name} ({r['source']})" if r.get("source") else name
        rss = r.get("peak_rss_mb")
        lines.append(f"| {label} | {r['mre_px']:.1f} | {r['sd_px']:.1f} | {r['median_px']:.1f} | "
                     f"{r['mre_mm']:.2f} | {r['sd_mm']:.2f} | {sdr} | {r['time_s']:.0f} | "
                     f"{'' if rss is None else f'{rss:.0f}'} |")
    names = list(rep["methods"])
    lines += ["", "Per-landmark MRE (px):", "",
              "| landmark | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for j in range(N_LM):
        vals = " | ".join(f"{rep['methods'][n]['per_landmark_px'][j]:.1f}" for n in names)
        lines.append(f"| {j + 1} {NAMES[j]} | {vals} |")
    lr = rep["methods"][key]
    cl = rep["methods"]["classical preview"]
    sps = ", ".join(f"{k} {v:.3f} s/step ({lr['steps'][k]} steps)"
                    for k, v in lr["s_per_step"].items()) or "no pre-training steps"
    if lr["timings"].get("adapt_s") is not None:
        sps += f"; test-time adaptation {lr['timings']['adapt_s']:.0f} s"
    lines += ["", "Timing of the learned stage: "
              f"{lr['train_predict_s']:.0f} s train + predict ({sps}); time column = that + the "
              f"classical start ({cl['time_s']:.0f} s, median {cl['per_image_s']:.2f} s/image); "
              f"image loading excluded ({lr['load_s']:.0f} s for 120 full-resolution PNGs).  ",
              f"Learned vs classical: MRE {lr['mre_px']:.1f} vs {cl['mre_px']:.1f} px "
              f"({(lr['mre_px'] / cl['mre_px'] - 1) * 100:+.1f} %); Spearman(confidence, error) "
              f"of the learned stage {lr['confidence_spearman_vs_error']:.3f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
