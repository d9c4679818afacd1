"""Event-loop latency of the GUI while a CPU training runs, and how long the demo's quick
training takes.

A real QApplication (offscreen) shows the TrainingPanel; a 10 ms single-shot timer chain records
how late each tick fires (actual - scheduled) while
  (a) idle,
  (b) the training runs in the background process (JobProcess via TrainingPanel: the product),
  (b0) the same with the child at normal priority (nice 0), to separate priority from isolation,
  (c) the same training in this process on a QThread (the design we avoid: GIL + shared cores).
The training is `run_job(demo, "all", preset)`: classical preview + Stage I + Stage II on the
24-image phantom demo project, so the per-step wall times are also the demo's "quick" timing.

    nice -n 10 .venv/bin/python training/bench_gui_latency.py --preset quick

writes training/reports/gui_latency.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK_MS = 10.0


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(len(s) - 1, int(k) + 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _schedstat() -> tuple[float, float] | None:
    """(ms on a CPU, ms runnable but waiting for a CPU) of the calling thread (Linux)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run_ns, wait_ns, _ = f.read().split()
        return int(run_ns) / 1e6, int(wait_ns) / 1e6
    except (OSError, ValueError):
        return None


def _summary(lat_ms: list[float], wall_s: float, gaps: list[tuple[float, float, float]]) -> dict:
    """Latency percentiles; for late ticks (> 50 ms), how the gap before them was spent by the
    GUI thread: on a CPU (our code), waiting in the run queue (other processes had the cores),
    or neither (blocked / sleeping)."""
    late = [g for g in gaps if g[0] > 50]
    gap_ms = sum(g[0] + TICK_MS for g in late)
    run_ms = sum(g[1] for g in late)
    wait_ms = sum(g[2] for g in late)
    return {"ticks": len(lat_ms), "wall_s": round(wall_s, 2),
            "p50_ms": round(_percentile(lat_ms, 0.50), 2),
            "p99_ms": round(_percentile(lat_ms, 0.99), 2),
            "max_ms": round(max(lat_ms), 2) if lat_ms else float("nan"),
            "mean_ms": round(statistics.fmean(lat_ms), 2) if lat_ms else float("nan"),
            "over_50ms": sum(x > 50 for x in lat_ms),
            "over_100ms": sum(x > 100 for x in lat_ms),
            "late_gaps": {"total_ms": round(gap_ms, 1), "gui_on_cpu_ms": round(run_ms, 1),
                          "gui_waiting_for_cpu_ms": round(wait_ms, 1),
                          "other_ms": round(gap_ms - run_ms - wait_ms, 1)} if late else None}


def _machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "gpu": "none",
            "loadavg_at_start": [round(x, 2) for x in load] if load else None,
            "bench_niceness": os.nice(0) if hasattr(os, "nice") else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quick", help="bundled preset for Stage I and Stage II")
    ap.add_argument("--job", default="all")
    ap.add_argument("--n", type=int, default=24, help="demo project size (images)")
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the training (default: all cores but one)")
    ap.add_argument("--extra-threads", type=int, default=None,
                    help="also run (b) with this many torch threads (scenario process_tN)")
    ap.add_argument("--skip", default="",
                    help="comma list of scenarios to skip: b0, cancel, qthread")
    ap.add_argument("--out", default=str(REPO / "training" / "reports" / "gui_latency"))
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = Path(tempfile.mkdtemp(prefix="lmk_bench_latency_"))
    os.environ.setdefault("LMK_STUDIO_HOME", str(work / "home"))

    import torch
    from PySide6.QtCore import QEventLoop, QObject, Qt, QThread, QTimer, Signal
    from PySide6.QtWidgets import QApplication

    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.core.store import Project
    from lmk_studio.engine.jobs import JOB_STAGE, run_job
    from lmk_studio.engine.process import default_torch_threads
    from lmk_studio.gui.training_panel import TrainingPanel

    app = QApplication.instance() or QApplication([sys.argv[0]])
    panel = TrainingPanel()
    panel.resize(520, 760)
    panel.show()
    app.processEvents()
    threads = args.threads or default_torch_threads()

    class Probe:
        """10 ms single-shot chain: lateness = when the tick ran - when it was due."""

        def __init__(self) -> None:
            self.lat: list[float] = []
            self.gaps: list[tuple[float, float, float]] = []
            self.on = False
            self.due = 0.0
            self.sched = None
            self.timer = QTimer()
            self.timer.setSingleShot(True)
            self.timer.setTimerType(Qt.TimerType.PreciseTimer)
            self.timer.timeout.connect(self._tick)

        def start(self) -> None:
            self.lat, self.gaps, self.on = [], [], True
            self.sched = _schedstat()
            self._arm()

        def stop(self) -> tuple[list[float], list[tuple[float, float, float]]]:
            self.on = False
            return self.lat, self.gaps

        def _arm(self) -> None:
            self.due = time.perf_counter() + TICK_MS / 1000
            self.timer.start(int(TICK_MS))

        def _tick(self) -> None:
            if not self.on:
                return
            late = max(0.0, (time.perf_counter() - self.due) * 1000)
            self.lat.append(late)
            now = _schedstat()
            if now is not None and self.sched is not None:
                self.gaps.append((late, now[0] - self.sched[0], now[1] - self.sched[1]))
            self.sched = now
            self._arm()

    probe = Probe()
    machine = _machine()
    results: dict = {"command": "nice -n 10 .venv/bin/python training/bench_gui_latency.py "
                     + " ".join(sys.argv[1:]),
                     "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": machine, "preset": args.preset, "job": args.job,
                     "n_images": args.n, "torch_threads": threads, "scenarios": {}}

    def run_loop_until(cond, timeout_s: float) -> None:
        loop = QEventLoop()
        t = QTimer()
        t.setInterval(20)
        end = time.monotonic() + timeout_s
        t.timeout.connect(lambda: (cond() or time.monotonic() > end) and loop.quit())
        t.start()
        loop.exec()
        t.stop()

    def demo(tag: str) -> Path:
        return write_demo_project(work / tag, n=args.n, seed=0)

    def run_times(lmk: Path, run_ids: list[int]) -> dict:
        out = {}
        with Project.open(lmk) as p:
            for rid in run_ids:
                r = p.run(rid)
                t0 = datetime.fromisoformat(r.started)
                t1 = datetime.fromisoformat(r.finished) if r.finished else None
                out[f"{r.kind} (run {rid})"] = {
                    "status": r.status,
                    "seconds": round((t1 - t0).total_seconds(), 2) if t1 else None}
        return out

    # (a) idle -------------------------------------------------------------------------------
    print(f"(a) idle for {args.idle_s:.0f} s", flush=True)
    probe.start()
    t0 = time.monotonic()
    run_loop_until(lambda: False, args.idle_s)
    lat, gaps = probe.stop()
    results["scenarios"]["idle"] = _summary(lat, time.monotonic() - t0, gaps)
    print("   ", results["scenarios"]["idle"], flush=True)

    # (b) background process via the panel ------------------------------------------------------
    def via_process(tag: str, nice: int, n_threads: int) -> None:
        lmk = demo(tag)
        panel.set_project(lmk)
        state: dict = {"done": False, "steps": []}

        def on_progress(ev) -> None:
            if ev.stage == JOB_STAGE:
                state["steps"].append((round(time.monotonic() - t_start, 2), ev.message))

        def on_end(*a) -> None:
            state["done"] = True
            state["end"] = a

        panel.progress.connect(on_progress)
        panel.finished.connect(on_end)
        panel.failed.connect(on_end)
        panel.cancelled.connect(on_end)
        probe.start()
        t_start = time.monotonic()
        t_call = time.perf_counter()
        ok = panel.start_spec({"project": str(lmk), "job": args.job, "preset": args.preset,
                               "device": "cpu", "nice": nice, "torch_threads": n_threads})
        start_call_ms = (time.perf_counter() - t_call) * 1000
        if not ok:
            raise SystemExit(f"could not start the job: {panel.step_label.text()}")
        run_loop_until(lambda: state["done"], 3600)
        wall = time.monotonic() - t_start
        lat, gaps = probe.stop()
        for sig, fn in ((panel.progress, on_progress), (panel.finished, on_end),
                        (panel.failed, on_end), (panel.cancelled, on_end)):
            sig.disconnect(fn)
        final = panel.bridge.last_final or {}
        if final.get("type") != "finished":
            raise SystemExit(f"{tag}: the job ended as {final.get('type')}: "
                             f"{final.get('message')}")
        summ = _summary(lat, wall, gaps)
        summ.update({"child_nice": nice, "torch_threads": n_threads,
                     "start_call_ms": round(start_call_ms, 2),
                     "steps_received_at_s": state["steps"],
                     "runs": run_times(lmk, final.get("run_ids", []))})
        results["scenarios"][tag] = summ
        print("   ", summ, flush=True)

    print(f"(b) {args.job} {args.preset} in the background process (nice 5)", flush=True)
    via_process("process", 5, threads)
    if "b0" not in skip:
        print(f"(b0) {args.job} {args.preset} in the background process (nice 0)", flush=True)
        via_process("process_nice0", 0, threads)
    if args.extra_threads:
        k = args.extra_threads
        print(f"(b{k}) {args.job} {args.preset} in the background process, {k} threads",
              flush=True)
        via_process(f"process_t{k}", 5, k)

    # (d) cancel latency: Cancel pressed 3 s into Stage I training, then (Resume) into Stage II
    if "cancel" not in skip:
        print("(d) cancel latency during Stage I and Stage II training", flush=True)
        lmk = demo("cancel")
        panel.set_project(lmk)
        cancels = []
        for stage, resume in (("stage1", False), ("stage2", True)):
            st: dict = {"t_loss": None, "done": False}

            def on_prog(ev, stage=stage, st=st) -> None:
                if ev.stage.startswith(stage) and ev.losses and st["t_loss"] is None:
                    st["t_loss"] = time.monotonic()

            def on_end(*a, st=st) -> None:
                st["done"] = True

            panel.progress.connect(on_prog)
            for sig in (panel.finished, panel.failed, panel.cancelled):
                sig.connect(on_end)
            if not panel.start("all", preset=args.preset, device="cpu", resume=resume):
                raise SystemExit(f"could not start: {panel.step_label.text()}")
            run_loop_until(lambda st=st: st["t_loss"] is not None and
                           time.monotonic() - st["t_loss"] > 3.0 or st["done"], 600)
            t_cancel = time.monotonic()
            pid = panel.bridge.process.pid
            panel.cancel()
            run_loop_until(lambda st=st: st["done"], 60)
            took = time.monotonic() - t_cancel
            final = panel.bridge.last_final or {}
            panel.progress.disconnect(on_prog)
            for sig in (panel.finished, panel.failed, panel.cancelled):
                sig.disconnect(on_end)
            import psutil

            alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
            with Project.open(lmk) as p:
                statuses = {f"{r.kind} (run {r.id})": r.status for r in p.runs()}
            cancels.append({"during": stage, "resume": resume, "result": final.get("type"),
                            "forced": final.get("forced"), "cancel_to_end_s": round(took, 2),
                            "child_alive_after": alive, "run_statuses": statuses})
            print("   ", cancels[-1], flush=True)
        results["cancel"] = cancels

    # (c) baseline: the same training on a QThread of the GUI process -----------------------------
    if "qthread" not in skip:
        print(f"(c) {args.job} {args.preset} on a QThread in the GUI process", flush=True)
        lmk = demo("qthread")
        panel.set_project(lmk)
        torch.set_num_threads(threads)

        class Relay(QObject):
            progress = Signal(object)

        relay = Relay()
        relay.progress.connect(panel._on_progress, Qt.ConnectionType.QueuedConnection)

        class Worker(QThread):
            def run(self) -> None:
                try:
                    self.ids = run_job(lmk, args.job, preset=args.preset, device="cpu",
                                       progress=relay.progress.emit)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    self.error = exc

        w = Worker()
        w.ids, w.error = [], None
        probe.start()
        t_start = time.monotonic()
        w.start()
        run_loop_until(lambda: w.isFinished(), 3600)
        wall = time.monotonic() - t_start
        lat, gaps = probe.stop()
        w.wait()
        if w.error is not None:
            raise SystemExit(f"QThread run failed: {w.error!r}")
        summ = _summary(lat, wall, gaps)
        summ["runs"] = run_times(lmk, w.ids)
        results["scenarios"]["qthread"] = summ
        print("   ", summ, flush=True)

    panel.shutdown(5)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(_markdown(results), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out.with_suffix('.md')}", flush=True)
    return 0


def _markdown(r: dict) -> str:
    m = r["machine"]
    names = {"idle": "(a) idle", "process": "(b) training in the background process (nice 5)",
             "process_nice0": "(b0) background process, normal priority (nice 0)",
             "qthread": "(c) same training on a QThread in the GUI process"}
    for key, s in r["scenarios"].items():
        if key.startswith("process_t"):
            names[key] = (f"(b{key[9:]}) background process, {s['torch_threads']} torch "
                          "threads (nice 5)")
    lines = [
        "# GUI event-loop latency during CPU training",
        "",
        f"Command: `{r['command']}` ({r['date_utc']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['machine']}, {m['system']}, Python "
        f"{m['python']}, no GPU. Load average at start {m['loadavg_at_start']}: the machine is "
        "shared with other jobs (up to seven helpers on 2 cores), so absolute times are noisy "
        f"and pessimistic. The benchmark itself ran at niceness {m['bench_niceness']}.",
        "",
        f"Training: `run_job(demo, {r['job']!r}, preset={r['preset']!r}, device='cpu')` on the "
        f"{r['n_images']}-image phantom demo project (classical preview, Stage I, Stage II); "
        f"{r['torch_threads']} torch thread(s) in the trainer (all cores but one) unless a row "
        f"says otherwise. Probe: a {TICK_MS:.0f} ms single-shot QTimer chain; latency = when "
        "the tick ran minus when it was due. The TrainingPanel is shown and updates its "
        "progress bar, loss curves and log "
        "tail from the training's events in every scenario.",
        "",
        "| scenario | ticks | wall s | p50 ms | p99 ms | max ms | ticks > 50 ms | late gaps: "
        "GUI on CPU / waiting for a CPU / blocked (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    sc = r["scenarios"]
    for key, s in sc.items():
        g = s.get("late_gaps")
        att = (f"{g['total_ms']:.0f}: {g['gui_on_cpu_ms']:.0f} / "
               f"{g['gui_waiting_for_cpu_ms']:.0f} / {g['other_ms']:.0f}") if g else "–"
        lines.append(f"| {names.get(key, key)} | {s['ticks']} | {s['wall_s']} | {s['p50_ms']} "
                     f"| {s['p99_ms']} | {s['max_ms']} | {s['over_50ms']} | {att} |")
    lines += ["", "Late gaps: the intervals before ticks that were > 50 ms late, split with the "
              "GUI thread's /proc schedstat into time it ran (our code), time it was runnable "
              "but waiting for a core (other processes had both cores), and the rest (sleeping "
              "until the tick was due, 10 ms per tick, or blocked: "
              "in the QThread case mostly waiting for the GIL).", ""]
    if "process" in sc and "qthread" in sc:
        b, c = sc["process"], sc["qthread"]
        lines.append(f"p99 ratio QThread / process: {c['p99_ms'] / max(b['p99_ms'], 1e-9):.1f}x; "
                     f"max ratio: {c['max_ms'] / max(b['max_ms'], 1e-9):.1f}x. "
                     f"Target p99 < 50 ms for (b): "
                     f"{'met' if b['p99_ms'] < 50 else 'NOT met'}.")
        lines.append("")
        notes = []
        for key in ("process", "qthread"):
            g = sc[key].get("late_gaps")
            if g and g["total_ms"] > 0:
                notes.append(f"{names[key]}: of {g['total_ms']:.0f} ms in late gaps, "
                             f"{100 * g['gui_waiting_for_cpu_ms'] / g['total_ms']:.0f}% was the "
                             f"GUI thread waiting for a core, "
                             f"{100 * g['gui_on_cpu_ms'] / g['total_ms']:.0f}% running, "
                             f"{100 * g['other_ms'] / g['total_ms']:.0f}% sleeping/blocked.")
        lines += [f"- {n}" for n in notes] + [""]
    lines += ["## Wall time of the demo training per step", "",
              "From the project store's run start/finish times (the child's process start and "
              "torch import are outside the runs; `total` is the wall time from Start to the "
              "finished signal).", "",
              "| scenario | step | status | seconds |", "|---|---|---|---:|"]
    for key, s in sc.items():
        for name, v in s.get("runs", {}).items():
            lines.append(f"| {key} | {name} | {v['status']} | {v['seconds']} |")
        if "runs" in s:
            lines.append(f"| {key} | total (Start → finished) | | {s['wall_s']} |")
    lines.append("")
    if r.get("cancel"):
        lines += ["## Cancel", "",
                  "Cancel pressed 3 s after the first loss event of the stage (on the panel, as a "
                  "user would); time until the panel's `cancelled` signal, which comes only after "
                  "the child has exited. `forced` = the child had to be terminated after the 2 s "
                  "grace.", "",
                  "| during | resumed run | result | cancel → child gone (s) | forced | child "
                  "alive after | run statuses in the project |", "|---|---|---|---:|---|---|---|"]
        for c in r["cancel"]:
            runs = ", ".join(f"{k}: {v}" for k, v in c["run_statuses"].items())
            lines.append(f"| {c['during']} | {c['resume']} | {c['result']} | "
                         f"{c['cancel_to_end_s']} | {c['forced']} | {c['child_alive_after']} | "
                         f"{runs} |")
        lines.append("")
    if "process" in sc:
        lines.append(f"Spawning the child (TrainingPanel.start_spec) took "
                     f"{sc['process']['start_call_ms']} ms of GUI time.")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
