"""Thread policy on a shared machine: how much a training step slows down when one other busy
process runs beside it, for several thread settings, side by side in one run.

Why: on a 2-core machine with one `yes > /dev/null` beside it, Stage II went from ~0.5 s to ~5 s
a step: torch's OpenMP workers spin-wait at every barrier, and with a core taken they spin against
each other and the other process. Each policy runs in a fresh interpreter (OpenMP reads its
environment once, when torch is first imported), on the cpu presets' real shapes:
- stage2: one C2T step's compute (two TinyUNet(base 12, depth 3) detectors, forward + backward
  on 24 patches of 48 px, Adam), what the Stage II cpu preset runs 600 times;
- stage1: one test-time adaptation step of the Stage I crop net (small_cnn width 8, 19 crop pairs
  of 64 px), what the Stage I cpu preset runs 8 times per image.

Usage: python training/bench_threads.py [--steps 30] [--out training/reports/threads.md]
Label: a diagnostic of the engines' compute (not a product figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES: dict[str, dict] = {
    # torch as installed: as many threads as cores, OpenMP's own wait (spin a while, then sleep)
    "torch default (2 threads, OpenMP default wait)": {"threads": 0, "env": {}},
    "2 threads, active wait": {"threads": 0, "env": {"OMP_WAIT_POLICY": "ACTIVE"}},
    "2 threads, passive wait": {"threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "2 threads, spin 10k then sleep": {"threads": 2, "env": {"GOMP_SPINCOUNT": "10000"}},
    "2 threads, spin 100k then sleep": {"threads": 2, "env": {"GOMP_SPINCOUNT": "100000"}},
    "1 thread": {"threads": 1, "env": {}},
    "app policy (lmk_studio.engine.threads)": {"threads": -1, "env": {}},
}
#: variables a policy may set; cleared first so that only the policy's own apply
_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child(workload: str, steps: int, threads: int) -> None:
    """Runs in the fresh interpreter: time `steps` steps after 3 warm-up steps."""
    if threads == -1:
        import lmk_studio  # noqa: F401  - as the app does: its policy is set before torch loads
    import torch

    if threads == -1:
        from lmk_studio.engine.threads import apply_thread_policy

        apply_thread_policy()
    elif threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if workload == "stage2":
        from lmk_studio.engine.stage2.detectors import build_detector

        nets = [build_detector("unet", 19, base=12, depth=3) for _ in range(2)]
        opt = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=1e-3)
        x = torch.rand(24, 1, 48, 48)
        y = torch.rand(24, 19, 48, 48)

        def step() -> None:
            opt.zero_grad()
            loss = sum(((n(x) - y) ** 2).mean() for n in nets)
            loss.backward()
            opt.step()
    else:
        from lmk_studio.engine.stage1 import EGTNet

        net = EGTNet("small_cnn", width=8, d_model=32, heads=2, n_layers=1, global_type="none")
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        src, tgt = torch.rand(19, 1, 64, 64), torch.rand(19, 1, 64, 64)
        pts = torch.zeros(19, 1, 2)

        def step() -> None:
            opt.zero_grad()
            out = net(src, tgt, n_local=2, pts=pts)
            loss = ((out["warped"][-1] - tgt) ** 2).mean()
            loss.backward()
            opt.step()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    print(json.dumps({"s_per_step": dt, "threads": torch.get_num_threads(),
                      "wait": os.environ.get("OMP_WAIT_POLICY", "")}))


def run_one(workload: str, steps: int, policy: dict, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _POLICY_VARS}
    env.update(policy["env"])
    if policy["threads"] != -1:
        env.pop("LMK_STUDIO_THREADS", None)
    hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
    try:
        out = subprocess.run([sys.executable, __file__, "--child", workload, "--steps", str(steps),
                              "--threads", str(policy["threads"])], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=1800)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--workloads", default="stage2,stage1")
    ap.add_argument("--out", default=str(ROOT / "training" / "reports" / "threads.md"))
    a = ap.parse_args()
    if a.child:
        child(a.child, a.steps, a.threads)
        return
    rows = []
    for wl in a.workloads.split(","):
        for name, pol in POLICIES.items():
            idle = run_one(wl, a.steps, pol, False)
            busy = run_one(wl, a.steps, pol, True)
            rows.append({"workload": wl, "policy": name, "threads": idle["threads"],
                         "idle_s": idle["s_per_step"], "busy_s": busy["s_per_step"],
                         "ratio": busy["s_per_step"] / idle["s_per_step"]})
            print(rows[-1], flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    lines = ["# Thread policy beside a busy process (diagnostic)", "",
             f"Command: `python training/bench_threads.py --steps {a.steps}`; "
             f"{time.strftime('%Y-%m-%d %H:%M')}; machine: {os.cpu_count()} cores, {cpu}; "
             f"load average at the end {os.getloadavg()[0]:.1f} (the machine is shared: other "
             "processes may have run too). 'busy' = one `yes > /dev/null` beside the run.", "",
             "| workload | policy | torch threads | idle s/step | busy s/step | busy / idle |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['policy']} | {r['threads']} | {r['idle_s']:.3f} | "
                     f"{r['busy_s']:.3f} | {r['ratio']:.2f} |")
    out = Path(a.out)
    marker = "<!-- notes below are kept -->"
    notes = ""
    if out.exists() and marker in out.read_text("utf-8"):
        notes = out.read_text("utf-8").split(marker, 1)[1]
    out.write_text("\n".join(lines) + "\n\n" + marker + notes, "utf-8")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1), "utf-8")


if __name__ == "__main__":
    main()
