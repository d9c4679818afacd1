"""Run an engine job in its own process, so a crash, an out-of-memory kill or a stuck native
library can never take the window down, and cancelling always frees the GPU (the process exits).

The parent side (`JobProcess`) is Qt-free and never blocks: the GUI polls `poll_events()` from a
timer, the CLI and tests use `wait()`. Children are started with the *spawn* method (a fork of a
process with Qt or CUDA loaded is unsafe). Events are plain dicts:

- ``{"type": "started", "pid", "job", "log_path"}``
- ``{"type": "progress", "stage", "epoch", "epochs", "step", "steps", "losses", "eta_s",
  "message", "fraction"}`` (an engine.common.ProgressEvent, throttled to ~20 per second)
- ``{"type": "log", "level", "name", "message"}``
- ``{"type": "run_started", "run_id", "kind"}``
- final, exactly one, delivered only after the child has exited:
  ``finished`` (``run_ids``), ``cancelled`` (``run_ids``), ``failed`` (``message``,
  ``error_type``) or ``crashed`` (``exitcode``, ``message``); each carries ``log_path``.

After a crash or a forced stop the parent marks the runs the child left "running" in the project
as failed / cancelled, so the store never claims a run is still going.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import importlib
import logging
import multiprocessing as mp
import multiprocessing.util  # noqa: F401 - registers its atexit now, so ours (later) runs first
import os
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("lmk_studio.engine.process")

FINAL_TYPES = ("finished", "cancelled", "failed", "crashed")
MAX_RUNS = 64
_PROGRESS_MIN_S = 0.05
# a pipe write up to PIPE_BUF (4 KiB on Linux) is atomic, and 900 characters stay under it in
# UTF-8: a child killed mid-write cannot leave half a message that would block the parent's
# reader; long texts stay whole in the log file
_MAX_TEXT = 900
_LIVE: weakref.WeakSet[JobProcess] = weakref.WeakSet()


def _shutdown_all() -> None:
    """At interpreter exit (before multiprocessing SIGTERMs its daemon children): cancel live
    jobs properly so they checkpoint and no run is left "running" in a project."""
    for jp in list(_LIVE):
        with contextlib.suppress(Exception):
            if jp.is_running():
                jp.cancel()
                jp.wait(timeout=jp.grace_s + jp.kill_after_s + 1.0)


atexit.register(_shutdown_all)


def default_torch_threads() -> int:
    """Leave one core to the window: a training that takes every core makes the GUI stutter."""
    return max(1, (os.cpu_count() or 1) - 1)


def describe_exit(exitcode: int | None) -> str:
    """Words for how a child process ended without saying goodbye."""
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if name == "SIGKILL":
            return (f"was killed by the system ({name}); the most common cause is running out "
                    "of memory: close other programs or use a smaller preset")
        if name == "SIGSEGV":
            return f"crashed ({name}, a fault in native code)"
        if name in ("SIGTERM", "SIGINT"):
            return f"was stopped from outside ({name})"
        return f"was ended by {name}"
    if sys.platform == "win32" and exitcode > 0x7FFFFFFF:
        return f"crashed (Windows status 0x{exitcode:08X})"
    return f"exited unexpectedly with exit code {exitcode}"


def _tail(path: Path | None, n: int = 8) -> list[str]:
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n") for ln in deque(f, maxlen=n)]
    except OSError:
        return []


def new_log_path(job: str) -> Path:
    """A fresh per-job log file under the user's log folder."""
    from lmk_studio.core.paths import log_dir

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in job)[:40]
    return log_dir() / f"job-{stamp}-{safe}.log"


class JobProcess:
    """One engine job in a spawned process; parent side. Not thread-safe: use from one thread.

    spec keys: ``project`` (path), ``job`` (engine.jobs.JOBS), ``preset``, ``device``,
    ``resume``, ``seed``, ``images``, ``torch_threads`` (default: all cores but one),
    ``nice`` (priority drop of the child, default 5), ``log_path`` (default: a new file in the
    user's log folder) and ``target`` ("module:function" called like engine.jobs.run_job instead
    of it; for plugins and tests).
    """

    def __init__(self, grace_s: float = 2.0, kill_after_s: float = 2.0,
                 exit_wait_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.kill_after_s = kill_after_s
        self.exit_wait_s = exit_wait_s
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._queue: Any = None
        self._cancel_ev: Any = None
        self._runs: Any = None
        self.spec: dict[str, Any] = {}
        self.log_path: Path | None = None
        self._reset()

    def _reset(self) -> None:
        self._final: dict[str, Any] | None = None
        self._final_seen_at: float | None = None
        self._cancel_at: float | None = None
        self._terminated = False
        self._killed = False
        self._done = False
        self.started_at: float | None = None
        self.ended_at: float | None = None

    # ---- state -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def exitcode(self) -> int | None:
        return None if self._proc is None else self._proc.exitcode

    def is_alive(self) -> bool:
        """The child process exists and has not exited."""
        return self._proc is not None and self._proc.is_alive()

    def is_running(self) -> bool:
        """Started and its final event not yet delivered (the process may be exiting)."""
        return self._proc is not None and not self._done

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_at is not None

    # ---- control -----------------------------------------------------------------------
    def start(self, spec: dict[str, Any]) -> None:
        """Spawn the child for `spec`; returns at once (the child imports torch on its own)."""
        if self.is_running():
            from lmk_studio.core.errors import LmkError

            raise LmkError("a job is already running: wait for it or cancel it first")
        spec = dict(spec)
        if "target" not in spec:
            from lmk_studio.engine.jobs import JOBS

            if spec.get("job") not in JOBS:
                from lmk_studio.core.errors import LmkError

                raise LmkError(f"unknown job {spec.get('job')!r}: use one of {', '.join(JOBS)}")
        if spec.get("project") is not None:
            spec["project"] = str(Path(spec["project"]).resolve())
        spec.setdefault("torch_threads", default_torch_threads())
        spec.setdefault("nice", 5)
        if not spec.get("log_path"):
            spec["log_path"] = str(new_log_path(str(spec.get("job") or "job")))
        self.spec = spec
        self.log_path = Path(spec["log_path"])
        self._reset()
        self._queue = self._ctx.Queue()
        self._cancel_ev = self._ctx.Event()
        self._runs = self._ctx.Array("q", MAX_RUNS + 1)
        self._proc = self._ctx.Process(
            target=_child_main, name=f"lmk-job-{spec.get('job')}",
            args=(spec, self._queue, self._cancel_ev, self._runs, os.getpid()), daemon=True)
        self.started_at = time.monotonic()
        self._proc.start()
        _LIVE.add(self)
        log.info("job %s started in process %s (log %s)", spec.get("job"), self._proc.pid,
                 self.log_path)

    def cancel(self) -> None:
        """Ask the job to stop; it checkpoints and exits, or is terminated after `grace_s` and
        killed `kill_after_s` later. Returns at once; keep polling to see it end."""
        if self._proc is None or self._done:
            return
        if self._cancel_at is None:
            self._cancel_at = time.monotonic()
            self._cancel_ev.set()
            log.info("job %s: cancel requested", self.spec.get("job"))
        self._escalate()

    def started_runs(self) -> list[int]:
        """Run ids the child has created in the project so far (shared memory, crash-proof)."""
        if self._runs is None:
            return []
        with self._runs.get_lock():
            n = int(self._runs[0])
            return [int(self._runs[i + 1]) for i in range(min(n, MAX_RUNS))]

    # ---- events ------------------------------------------------------------------------
    def poll_events(self, max_events: int = 500) -> list[dict[str, Any]]:
        """Everything the child sent since the last call (never blocks). The final event comes
        last, once the child has exited; after it `is_running()` is False."""
        out: list[dict[str, Any]] = []
        if self._proc is None or self._done:
            return out
        drained = self._drain(out, max_events)
        self._escalate()
        if self._final is not None and self._proc.is_alive():
            # said goodbye but does not exit (a stuck non-daemon thread?): end it
            if self._final_seen_at is None:
                self._final_seen_at = time.monotonic()
            elif time.monotonic() - self._final_seen_at > self.exit_wait_s:
                self._terminate("it did not exit after finishing")
        if drained and not self._proc.is_alive():
            self._proc.join(0.1)
            if self._proc.exitcode is not None:
                out.append(self._conclude())
        return out

    def wait(self, timeout: float | None = None,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Block (CLI, tests) until the final event, polling; returns it, or None on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            for ev in self.poll_events():
                if on_event is not None:
                    on_event(ev)
                if ev["type"] in FINAL_TYPES:
                    return ev
            if self._done:
                return None
            if end is not None and time.monotonic() > end:
                return None
            time.sleep(0.05)

    def _drain(self, out: list[dict[str, Any]], max_events: int) -> bool:
        """Move queued events to `out`; True when the queue was emptied."""
        for _ in range(max_events):
            try:
                ev = self._queue.get_nowait()
            except queue.Empty:
                return True
            except (EOFError, OSError, ValueError):
                return True  # the pipe broke with the child; nothing more will come
            if ev.get("type") in FINAL_TYPES:
                self._final = ev
                self._final_seen_at = time.monotonic()
            else:
                out.append(ev)
        return False

    def _escalate(self) -> None:
        if self._cancel_at is None or self._proc is None or not self._proc.is_alive():
            return
        waited = time.monotonic() - self._cancel_at
        if not self._terminated and waited >= self.grace_s:
            self._terminate(f"it did not stop within {self.grace_s:.0f} s of the cancel")
        elif self._terminated and not self._killed and waited >= self.grace_s + self.kill_after_s:
            self._killed = True
            log.warning("job %s: still alive after terminate; killing it", self.spec.get("job"))
            self._proc.kill()

    def _terminate(self, why: str) -> None:
        if not self._terminated:
            self._terminated = True
            log.warning("job %s: terminating process %s: %s", self.spec.get("job"), self.pid, why)
            self._proc.terminate()

    def _conclude(self) -> dict[str, Any]:
        """Build the final event once the child is gone, and tidy the project if needed."""
        self._done = True
        self.ended_at = time.monotonic()
        code = self._proc.exitcode
        runs = self.started_runs()
        final = self._final
        if final is None:
            if self._cancel_at is not None:
                final = {"type": "cancelled", "run_ids": runs,
                         "message": "cancelled: the job was stopped"
                                    + (" (forced)" if self._terminated else "")}
            else:
                tail = _tail(self.log_path)
                msg = f"the training process {describe_exit(code)}."
                if tail:
                    msg += " Last log lines:\n" + "\n".join(tail)
                final = {"type": "crashed", "exitcode": code, "message": msg}
        final = dict(final)
        final.setdefault("run_ids", runs)
        final["exitcode"] = code
        final["log_path"] = str(self.log_path) if self.log_path else None
        final["forced"] = self._terminated
        if final["type"] != "finished":
            status = "cancelled" if final["type"] == "cancelled" else "failed"
            final["tidied_runs"] = self._tidy_runs(runs, status, final.get("message", ""))
        self._close_channels()
        log.info("job %s ended: %s (exit code %s)", self.spec.get("job"), final["type"], code)
        return final

    def _tidy_runs(self, runs: list[int], status: str, message: str) -> list[int]:
        """Mark runs a dead child left "running" as failed / cancelled; returns their ids."""
        project = self.spec.get("project")
        if not runs or not project:
            return []
        tidied: list[int] = []
        try:
            from lmk_studio.core.store import Project

            with Project.open(Path(project)) as p:
                for rid in runs:
                    try:
                        rec = p.run(rid)
                    except Exception:  # noqa: BLE001 - a run the child never committed
                        continue
                    if rec.status == "running":
                        p.finish_run(rid, status, metrics={"error": message[:2000]})
                        tidied.append(rid)
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the GUI loop
            log.error("could not mark the runs %s of %s as %s: %s", runs, project, status, exc)
        return tidied

    def _close_channels(self) -> None:
        with contextlib.suppress(Exception):
            self._queue.close()
            self._queue.join_thread()


# ---- child side ------------------------------------------------------------------------

class _QueueLogHandler(logging.Handler):
    """Log records -> event dicts on the parent's queue (formatted here: records may not pickle)."""

    def __init__(self, put: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(logging.INFO)
        self._put = put

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if len(text) > _MAX_TEXT:
                text = text[:_MAX_TEXT] + " … (cut; the job log has it all)"
            self._put({"type": "log", "level": record.levelno, "name": record.name,
                       "message": text})
        except Exception:  # noqa: BLE001 - logging must never raise into the job
            self.handleError(record)


def _progress_sender(put: Callable[[dict[str, Any]], None]) -> Callable[[Any], None]:
    last: dict[str, float] = {}
    last_stage = [""]

    def progress(ev: Any) -> None:
        now = time.monotonic()
        edge = ev.stage != last_stage[0] or ev.step >= ev.steps or ev.step <= 1 or ev.stage == "job"
        if not edge and now - last.get(ev.stage, 0.0) < _PROGRESS_MIN_S:
            return
        last[ev.stage] = now
        last_stage[0] = ev.stage
        put({"type": "progress", "stage": ev.stage, "epoch": ev.epoch, "epochs": ev.epochs,
             "step": ev.step, "steps": ev.steps,
             "losses": {str(k): float(v) for k, v in (ev.losses or {}).items()},
             "eta_s": ev.eta_s, "message": str(ev.message)[:300], "fraction": ev.fraction})

    return progress


def _announce_runs(runs: Any, put: Callable[[dict[str, Any]], None]) -> None:
    """Every run this child starts is written to shared memory at once (a SIGKILL a moment
    later cannot lose it), so the parent can close runs the child leaves "running"."""
    try:
        from lmk_studio.core.store import Project
    except ImportError:
        return
    original = Project.start_run

    def start_run(self: Any, kind: str, config: dict, *args: Any, **kwargs: Any) -> int:
        rid = original(self, kind, config, *args, **kwargs)
        with runs.get_lock():
            n = int(runs[0])
            if n < MAX_RUNS:
                runs[n + 1] = int(rid)
                runs[0] = n + 1
        put({"type": "run_started", "run_id": int(rid), "kind": kind})
        return rid

    Project.start_run = start_run  # type: ignore[method-assign]  # dedicated child process


def _watch_parent(parent_pid: int, cancel_ev: Any) -> None:
    """An orphaned job cancels itself (and then exits hard), so it never holds a GPU forever."""
    import psutil

    orphan_since: float | None = None
    while True:
        time.sleep(0.5)
        gone = not psutil.pid_exists(parent_pid) or (
            hasattr(os, "getppid") and sys.platform != "win32" and os.getppid() != parent_pid)
        if gone and orphan_since is None:
            orphan_since = time.monotonic()
            logging.getLogger("lmk_studio.engine.process").warning(
                "the app that started this job is gone: cancelling")
            cancel_ev.set()
        if orphan_since is not None and time.monotonic() - orphan_since > 30:
            os._exit(70)


def _lower_priority(nice: int) -> None:
    if nice <= 0:
        return
    try:
        if sys.platform == "win32":
            import psutil

            psutil.Process().nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
        else:
            os.nice(nice)
    except (OSError, ImportError, AttributeError):
        pass


def _resolve_target(name: str) -> Callable[..., Any]:
    mod, _, fn = name.partition(":")
    if not mod or not fn:
        raise ValueError(f"job target {name!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(mod), fn)


def _child_main(spec: dict[str, Any], q: Any, cancel_ev: Any, runs: Any,
                parent_pid: int) -> None:
    """Entry point of the spawned process."""

    def put(ev: dict[str, Any]) -> None:
        ev.setdefault("t", time.time())
        q.put(ev)

    log_path = Path(spec["log_path"]) if spec.get("log_path") else None
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_note = None
    if log_path is not None:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_path, encoding="utf-8")
            fh.setFormatter(fmt)
            root.addHandler(fh)
            faulthandler.enable(file=fh.stream, all_threads=True)
        except OSError as exc:
            file_note = f"could not write the job log {log_path}: {exc}"
            log_path = None
    qh = _QueueLogHandler(put)
    qh.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(qh)
    logging.captureWarnings(True)
    clog = logging.getLogger("lmk_studio.engine.process")
    if file_note:
        clog.warning(file_note)

    _lower_priority(int(spec.get("nice", 0) or 0))
    threading.Thread(target=_watch_parent, args=(parent_pid, cancel_ev), daemon=True,
                     name="lmk-parent-watch").start()
    job = str(spec.get("job") or "")
    put({"type": "started", "pid": os.getpid(), "job": job,
         "log_path": str(log_path) if log_path else None})
    run_ids: list[int] = []
    code = 0
    try:
        import torch

        from lmk_studio.engine.common import CancelToken

        torch.set_num_threads(max(1, int(spec.get("torch_threads") or 1)))

        class SharedCancelToken(CancelToken):
            """The engine's token, backed by the parent's multiprocessing Event."""

            def __init__(self) -> None:
                super().__init__()
                self._event = cancel_ev

        _announce_runs(runs, put)
        if spec.get("target"):
            func = _resolve_target(str(spec["target"]))
        else:
            from lmk_studio.engine.jobs import run_job as func
        clog.info("job %s on %s (preset %s, device %s, %d torch threads)", job,
                  spec.get("project"), spec.get("preset"), spec.get("device", "auto"),
                  torch.get_num_threads())
        result = func(spec.get("project"), job, preset=spec.get("preset"),
                      device=spec.get("device") or "auto", resume=bool(spec.get("resume")),
                      seed=spec.get("seed"), progress=_progress_sender(put),
                      cancel=SharedCancelToken(), images=spec.get("images"))
        run_ids = [int(r) for r in (result or [])]
        put({"type": "finished", "run_ids": run_ids})
    except BaseException as exc:  # noqa: BLE001 - every ending is reported to the parent
        _report_failure(exc, put, clog, job)
        code = 0 if isinstance(exc, _cancelled_types()) else 1
    # Leave at once: the project is closed and the final event queued; a normal interpreter
    # teardown with torch loaded can take seconds on a busy machine, and a cancel should free
    # the computer (and GPU) within the grace period.
    root.removeHandler(qh)
    logging.shutdown()
    with contextlib.suppress(Exception):
        q.close()
        q.join_thread()  # the final event is in the pipe before the process ends
    os._exit(code)


def _cancelled_types() -> tuple[type[BaseException], ...]:
    try:
        from lmk_studio.engine.common import Cancelled
    except Exception:  # noqa: BLE001
        return ()
    return (Cancelled,)


def _report_failure(exc: BaseException, put: Callable[[dict[str, Any]], None],
                    clog: logging.Logger, job: str) -> None:
    if isinstance(exc, _cancelled_types()):
        clog.info("job %s cancelled", job)
        put({"type": "cancelled", "message": "cancelled: the job stopped at your request"})
        return
    from lmk_studio.core.errors import LmkError

    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":
        msg = (f"{job}: out of memory ({name}: {exc}); close other programs, pick the 'cpu' or "
               "'quick' preset, or train on fewer images")
    elif isinstance(exc, LmkError):
        msg = str(exc)
    elif isinstance(exc, KeyboardInterrupt | SystemExit):
        msg = f"{job}: interrupted ({name})"
    else:
        msg = f"{job} failed: {name}: {exc}"
    clog.error("%s\n%s", msg, "".join(traceback.format_exception(exc)).rstrip())
    put({"type": "failed", "message": msg[:_MAX_TEXT], "error_type": name})
