"""The job process: events arrive, cancel stops the child within ~2 s, crashes are reported with
their exit code and never leave a run "running" in the project.

The `hook_*` functions are test-only jobs: the spawned child imports this module by name
(spec["target"] = "test_process:hook_..."), so they run in a real separate process.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from lmk_studio.engine.process import JobProcess, describe_exit

# ---- test-only jobs, run in the child ---------------------------------------------------------


def hook_finish(project, job, *, progress, cancel, **_kw):
    from lmk_studio.engine.common import ProgressEvent

    logging.getLogger("lmk_studio.test").info("hello from the child, project %s", project)
    for s in range(5):
        cancel.raise_if_cancelled()
        progress(ProgressEvent(stage="stage-x", epoch=0, epochs=1, step=s + 1, steps=5,
                               losses={"heat": 1.0 / (s + 1), "cross": 0.5}, eta_s=5.0 - s))
        time.sleep(0.06)
    return [11, 12]


def hook_cooperative(project, job, *, progress, cancel, **_kw):
    """A long job that honours the cancel token, like the stage trainers."""
    from lmk_studio.engine.common import ProgressEvent

    progress(ProgressEvent(stage="long", epoch=0, epochs=1, step=0, steps=1, message="ready"))
    while True:
        cancel.raise_if_cancelled()
        time.sleep(0.05)


def hook_stubborn(project, job, *, progress, cancel, **_kw):
    """A job stuck in code that never checks the token and ignores SIGTERM."""
    if hasattr(signal, "SIGTERM") and sys.platform != "win32":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from lmk_studio.engine.common import ProgressEvent

    progress(ProgressEvent(stage="stuck", epoch=0, epochs=1, step=0, steps=1, message="ready"))
    while True:
        time.sleep(0.05)


def hook_busy(project, job, **_kw):
    """Pure computation that never looks at the token (a stuck native call, say)."""
    x = 0
    while True:
        x = (x * 31 + 7) % 1_000_003


def hook_exit3(project, job, **_kw):
    logging.getLogger("lmk_studio.test").info("about to die")
    os._exit(3)


def hook_segfault(project, job, **_kw):
    """A fault in native code, as a broken driver or library would cause."""
    import ctypes

    ctypes.string_at(0)


def hook_memory(project, job, **_kw):
    raise MemoryError("simulated: 12 GiB requested")


def hook_lmkerror(project, job, **_kw):
    from lmk_studio.core.errors import ImageLoadError

    raise ImageLoadError("ñandú/röntgen 07.png", "truncated PNG stream")


def hook_sigkill(project, job, **_kw):
    os.kill(os.getpid(), signal.SIGKILL)


def hook_run_then_crash(project, job, **_kw):
    """Starts a run in the project store, then dies like an OOM kill would."""
    from lmk_studio.core.store import Project

    p = Project.open(project)
    p.start_run("stage1", {"preset": "test"})
    os.kill(os.getpid(), signal.SIGKILL)


# ---- tests -----------------------------------------------------------------------------------


def _spec(tmp_path, target: str, **kw):
    spec = {"job": target.split(":")[1], "target": f"test_process:{target.split(':')[1]}",
            "project": kw.pop("project", None), "torch_threads": 1, "nice": 0,
            "log_path": str(tmp_path / f"{target.split(':')[1]}.log")}
    spec.update(kw)
    return spec


def test_finished_job_delivers_progress_logs_and_run_ids(tmp_path) -> None:
    jp = JobProcess()
    jp.start(_spec(tmp_path, ":hook_finish"))
    assert jp.is_running()
    seen = []
    final = jp.wait(timeout=30, on_event=seen.append)
    assert final is not None and final["type"] == "finished", final
    assert final["run_ids"] == [11, 12]
    assert final["exitcode"] == 0
    types = [e["type"] for e in seen]
    assert types[0] == "started" and seen[0]["pid"] == jp.pid
    prog = [e for e in seen if e["type"] == "progress"]
    assert prog[-1]["step"] == 5 and prog[-1]["fraction"] == pytest.approx(1.0)
    assert prog[-1]["losses"] == {"heat": pytest.approx(0.2), "cross": 0.5}
    assert any("hello from the child" in e["message"] for e in seen if e["type"] == "log")
    # the final event comes only after the child is gone, and the log file holds the lines
    assert not jp.is_alive() and not jp.is_running()
    assert "hello from the child" in (tmp_path / "hook_finish.log").read_text(encoding="utf-8")
    assert jp.poll_events() == []


def test_cancel_of_a_cooperative_job_stops_it_quickly(tmp_path) -> None:
    jp = JobProcess()
    jp.start(_spec(tmp_path, ":hook_cooperative"))
    while not any(e["type"] == "progress" for e in jp.poll_events()):  # past the torch import
        time.sleep(0.05)
    t0 = time.monotonic()
    jp.cancel()
    final = jp.wait(timeout=10)
    took = time.monotonic() - t0
    assert final is not None and final["type"] == "cancelled" and not final["forced"]
    assert not psutil.pid_exists(jp.pid) or psutil.Process(jp.pid).status() == "zombie"
    assert took < 2.0, took


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be ignored on Windows")
def test_cancel_of_a_stuck_job_terminates_then_kills_it(tmp_path) -> None:
    jp = JobProcess(grace_s=0.5, kill_after_s=0.5)
    jp.start(_spec(tmp_path, ":hook_stubborn"))
    while not any(e["type"] == "progress" for e in jp.poll_events()):  # SIGTERM now ignored
        time.sleep(0.05)
    t0 = time.monotonic()
    jp.cancel()
    final = jp.wait(timeout=10)
    took = time.monotonic() - t0
    assert final is not None and final["type"] == "cancelled" and final["forced"]
    assert final["exitcode"] == -signal.SIGKILL
    assert not jp.is_alive()
    assert 0.9 < took < 2.5, took


def test_cancel_with_default_grace_ends_a_busy_child_within_three_seconds(tmp_path) -> None:
    jp = JobProcess()  # defaults: 2 s grace, then terminate
    jp.start(_spec(tmp_path, ":hook_busy"))
    while not any(e["type"] == "started" for e in jp.poll_events()):
        time.sleep(0.05)
    t0 = time.monotonic()
    jp.cancel()
    final = jp.wait(timeout=10)
    took = time.monotonic() - t0
    assert final is not None and final["type"] == "cancelled" and final["forced"]
    assert not jp.is_alive()
    assert 1.9 < took < 3.0, took


def test_crash_reports_exit_code_and_last_log_lines(tmp_path) -> None:
    jp = JobProcess()
    jp.start(_spec(tmp_path, ":hook_exit3"))
    final = jp.wait(timeout=30)
    assert final is not None and final["type"] == "crashed"
    assert final["exitcode"] == 3
    assert "exit code 3" in final["message"] and "about to die" in final["message"]
    assert final["log_path"] == str(tmp_path / "hook_exit3.log")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_segfault_is_reported_with_the_native_traceback(tmp_path) -> None:
    jp = JobProcess()
    jp.start(_spec(tmp_path, ":hook_segfault"))
    final = jp.wait(timeout=30)
    assert final["type"] == "crashed" and final["exitcode"] == -signal.SIGSEGV
    assert "SIGSEGV" in final["message"]
    # faulthandler wrote the Python stack of the crash into the job log
    log_text = (tmp_path / "hook_segfault.log").read_text(encoding="utf-8", errors="replace")
    assert "Segmentation fault" in log_text and "hook_segfault" in log_text


def test_failures_are_reported_in_words(tmp_path) -> None:
    mem, bad = JobProcess(), JobProcess()
    mem.start(_spec(tmp_path, ":hook_memory"))
    bad.start(_spec(tmp_path, ":hook_lmkerror"))
    f1, f2 = mem.wait(timeout=30), bad.wait(timeout=30)
    assert f1["type"] == "failed" and "out of memory" in f1["message"]
    assert f1["error_type"] == "MemoryError" and f1["exitcode"] == 1
    assert f2["type"] == "failed"
    assert f2["message"] == "ñandú/röntgen 07.png: truncated PNG stream"
    log_text = (tmp_path / "hook_memory.log").read_text(encoding="utf-8")
    assert "Traceback" in log_text and "simulated: 12 GiB" in log_text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_killed_child_is_reported_and_its_run_closed(tmp_path) -> None:
    store = pytest.importorskip("lmk_studio.core.store")
    pytest.importorskip("lmk_studio.core.images")
    phantoms = pytest.importorskip("lmk_studio.core.phantoms")
    lmk = phantoms.write_demo_project(tmp_path / "demo", n=3, size=(64, 48), seed=0)
    jp = JobProcess()
    jp.start(_spec(tmp_path, ":hook_run_then_crash", project=str(lmk)))
    final = jp.wait(timeout=30)
    assert final["type"] == "crashed" and final["exitcode"] == -signal.SIGKILL
    assert "out of memory" in final["message"]
    assert len(final["run_ids"]) == 1 and final["tidied_runs"] == final["run_ids"]
    with store.Project.open(lmk) as p:
        run = p.run(final["run_ids"][0])
        assert run.status == "failed" and "killed" in run.metrics["error"]


def test_describe_exit_words() -> None:
    assert "ran out" not in describe_exit(3) and "exit code 3" in describe_exit(3)
    if hasattr(signal, "SIGKILL"):
        assert "memory" in describe_exit(-signal.SIGKILL)
        assert "SIGSEGV" in describe_exit(-signal.SIGSEGV)


def test_unknown_job_is_refused_before_spawning(tmp_path) -> None:
    from lmk_studio.core.errors import LmkError

    jp = JobProcess()
    with pytest.raises(LmkError, match="unknown job 'stage3'"):
        jp.start({"job": "stage3", "project": str(tmp_path / "p.lmk")})
    assert not jp.is_running() and jp.pid is None


def test_interpreter_exit_cancels_a_live_job(tmp_path) -> None:
    """An app that exits without shutdown() still stops its job cleanly (atexit, before
    multiprocessing would SIGTERM the daemon child mid-step)."""
    import subprocess
    import textwrap

    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from lmk_studio.engine.process import JobProcess

        if __name__ == "__main__":
            jp = JobProcess()
            jp.start({{"job": "hook_cooperative", "target": "test_process:hook_cooperative",
                      "torch_threads": 1, "nice": 0, "log_path": {str(tmp_path / "c.log")!r}}})
            while not any(e["type"] == "progress" for e in jp.poll_events()):
                time.sleep(0.05)
            print(jp.pid, flush=True)
    """), encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    log_text = (tmp_path / "c.log").read_text(encoding="utf-8")
    assert "cancelled" in log_text  # the child stopped through its token, not a SIGTERM
