"""Smoke test of a built lmk-studio executable: its own `--self-test`, the CLI loop on a phantom
project, a clear error on bad input, and the window starting offscreen without dying. Exits non-zero on the first failure.

    python packaging/smoke_test.py build/dist/lmk-studio/lmk-studio [--train]

Also runs against the development install (`.venv/bin/lmk-studio`), which is how the test suite
checks this script itself.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(exe: str, *args: str, timeout: float = 600, expect: int = 0,
         env: dict | None = None) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    dt = time.perf_counter() - t0
    print(f"  {' '.join(args)[:70]:<70} exit {proc.returncode}  {dt:6.1f} s")
    if proc.returncode != expect:
        raise SystemExit(f"FAILED: {args} exited {proc.returncode} (expected {expect})\n"
                         f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def _window_survives(exe: str, project: Path, seconds: float, env: dict) -> None:
    """Start the app on the project offscreen; it must still be running after `seconds`."""
    genv = dict(env, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.Popen([exe, str(project)], env=genv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(seconds)
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise SystemExit(f"FAILED: the window exited early ({proc.returncode}):\n{out[-3000:]}")
        print(f"  window alive after {seconds:.0f} s offscreen")
    finally:
        proc.kill()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("exe")
    ap.add_argument("--train", action="store_true", help="also train Stage I (quick preset)")
    ap.add_argument("--gui-seconds", type=float, default=15.0)
    a = ap.parse_args(argv)
    exe = str(Path(a.exe).resolve())
    with tempfile.TemporaryDirectory(prefix="lmk_smoke_ü_") as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, LMK_STUDIO_HOME=str(tmp_path / "home"))
        print(f"smoke test of {exe}")
        out = _run(exe, "--version", env=env)
        if "lmk_studio" not in out:
            raise SystemExit(f"FAILED: --version printed {out!r}")
        # the app's own end-to-end check: preview, tiny Stage I/II, predict, export, DICOM
        # (pylibjpeg's decoders, found through entry points a frozen build can lose), window
        out = _run(exe, "--self-test", env=dict(env, QT_QPA_PLATFORM="offscreen"))
        if "self-test passed" not in out:
            raise SystemExit(f"FAILED: --self-test did not pass:\n{out[-3000:]}")
        _run(exe, "demo", str(tmp_path / "demo"), "--n", "6", env=env)
        projects = sorted((tmp_path / "demo").glob("*.lmk"))
        if not projects:
            raise SystemExit("FAILED: demo wrote no .lmk project")
        project = projects[0]
        _run(exe, "info", str(project), env=env)
        err = _run(exe, "info", str(tmp_path / "missing.lmk"), expect=2, env=env)
        if "missing.lmk" not in err:
            raise SystemExit(f"FAILED: the error does not name the file: {err!r}")
        _run(exe, "predict", str(project), "--method", "classical", "--device", "cpu", env=env)
        if a.train:
            _run(exe, "train", str(project), "--stage", "1", "--preset", "quick", "--device",
                 "cpu", timeout=1800, env=env)
        out_csv = tmp_path / "out.csv"
        _run(exe, "export", str(project), "--csv", str(out_csv), env=env)
        with out_csv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not any(r.get("status") == "predicted" for r in rows):
            raise SystemExit(f"FAILED: the exported CSV has no predicted rows ({len(rows)} rows)")
        print(f"  exported {len(rows)} rows")
        _window_survives(exe, project, a.gui_seconds, env)
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
