"""Development measurement of the learned Stage I refinement on a Hamedan subset (exemplar 001).

Starts from the cached classical start points of bench_stage2 (training/cache/
stage2_start_classical.npz) and the cached 1/4-scale images, trains the crop-refinement pass on
the subset only, and prints identity / classical / learned MRE in original px. Steering tool, not
the benchmark (that is training/bench_stage1.py, owned by the classical helper).

    nice -n 5 .venv/bin/python training/dev_stage1_refine.py [--n 21] [--epochs 25]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "training"))


def main() -> None:
    from bench_stage2 import load_down, load_truth, start_points

    from lmk_studio.engine.stage1 import PassConfig, Stage1Config, fit_stage1

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=21)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--jitter", type=float, default=6.0)
    ap.add_argument("--syn-end", type=float, default=1.0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    imgs, facs = load_down(4)
    f = float(facs[0][0])
    m = a.n
    imgs = imgs[:m]
    truth = load_truth()[:m]
    cls, info = start_points("classical")
    t_s = (truth + 0.5) / f - 0.5
    s_s = (cls[:m] + 0.5) / f - 0.5
    ref = PassConfig(crop=64, scale=1.0, jitter_px=a.jitter, backbone="small_cnn", width=8,
                     d_model=32, n_layers=1, global_type="none", epochs=a.epochs,
                     steps_per_epoch=8, batch=8, lr=1e-3, sigma=3.0, ema_every=5, eval_every=3,
                     local_ramp_frac=0.1, syn_end_frac=a.syn_end)
    cfg = Stage1Config(name="dev", start="classical", coarse=None, refine=ref)
    t0 = time.time()
    res = fit_stage1(imgs, 0, t_s[0], cfg, seed=0, start_points=s_s)
    wall = time.time() - t0

    def mre(p: np.ndarray) -> dict:
        e = np.linalg.norm((p[1:] - t_s[1:]) * f, axis=-1)
        return {"mre_px": float(np.nanmean(e)), "median_px": float(np.nanmedian(e)),
                "sd_px": float(np.nanstd(e)), "mre_mm": float(np.nanmean(e)) * 0.125}

    out = {"targets": m - 1, "exemplar": "001", "start_source": info.get("source"),
           "identity": mre(np.repeat(t_s[:1], m, 0)), "classical": mre(s_s),
           "learned_refine": mre(res.points), "wall_s": wall,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "config": ref.to_dict()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
