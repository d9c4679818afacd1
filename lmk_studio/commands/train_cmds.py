"""`lmk-studio train` and `lmk-studio predict`: the engine jobs from a terminal.

A one-line progress bar goes to stderr (rewritten with \\r); Ctrl-C asks the running job to
stop through its CancelToken, so it checkpoints and leaves a run that `--resume` continues;
a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from lmk_studio.core.errors import LmkError

EXIT_CANCELLED = 130
#: a prediction that wrote fewer points than it set out to (each missing image is named)
EXIT_INCOMPLETE = 3


# ---- terminal progress -----------------------------------------------------------------------
def _fmt_s(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class ProgressBar:
    """Renders engine ProgressEvents as one \\r-rewritten stderr line, at most ~10 times a
    second; a new line starts whenever the stage changes so the history stays readable."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._stage: str | None = None
        self._width = 0
        self.events = 0

    def __call__(self, ev: Any) -> None:
        self.events += 1
        now = time.monotonic()
        new_stage = ev.stage != self._stage
        last_step = ev.epoch + 1 >= ev.epochs and ev.step >= ev.steps
        if not (new_stage or last_step or now - self._last >= self.min_interval):
            return
        if new_stage and self._stage is not None:
            self.stream.write("\n")
            self._width = 0
        self._stage = ev.stage
        self._last = now
        self._write(self.line(ev))

    @staticmethod
    def line(ev: Any, bar_width: int = 20) -> str:
        frac = float(getattr(ev, "fraction", 0.0))
        fill = int(round(frac * bar_width))
        bar = "#" * fill + "-" * (bar_width - fill)
        parts = [f"{ev.stage} [{bar}] {frac * 100:3.0f}%"]
        if ev.losses:
            parts.append(f"epoch {ev.epoch + 1}/{ev.epochs} step {ev.step}/{ev.steps}")
            parts.append(f"ETA {_fmt_s(ev.eta_s)}")
            parts.append(" ".join(f"{k} {v:.3g}" for k, v in ev.losses.items()))
        elif ev.message:
            parts.append(ev.message)
        return "  ".join(parts)

    def _write(self, text: str) -> None:
        cols = shutil.get_terminal_size((120, 24)).columns - 1
        text = text[:cols]
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def note(self, text: str) -> None:
        """A full line of text (ends the current bar line first)."""
        if self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()
        self._stage = None

    def close(self) -> None:
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


@contextmanager
def _ctrl_c_cancels(token: Any, say: Callable[[str], None]) -> Iterator[None]:
    """First Ctrl-C: cancel the job cleanly (it checkpoints); second: KeyboardInterrupt."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_sig: int, _frame: Any) -> None:
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        say("Ctrl-C: stopping after the current step (press Ctrl-C again to abort at once)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


# ---- helpers ---------------------------------------------------------------------------------
def _open_project(path_arg: str):
    from lmk_studio.commands.project_cmds import existing_project_path

    path = existing_project_path(path_arg)
    if not path.exists():
        raise LmkError(f"{path}: project file not found")
    try:
        from lmk_studio.core.store import Project
    except ImportError as exc:  # pragma: no cover - only while the store is being written
        raise LmkError(f"the project store is not available in this build ({exc})") from exc
    return Project.open(path)


def _check_device(device: str) -> str:
    from lmk_studio.engine.common import select_device

    try:
        select_device(device)
    except (RuntimeError, ValueError) as exc:
        raise LmkError(str(exc)) from exc
    return device


def _resume_hint(proj, project_arg: str, stage: str) -> str:
    """What to do after a failure: continue from the failed run's checkpoint when one is kept."""
    from lmk_studio.engine import checkpoints

    runs = [r for r in proj.runs() if r.kind in ("stage1", "stage2")]
    if not runs:
        return ""
    r = max(runs, key=lambda r: r.id)
    stored = (r.checkpoints or {}).get("dir") or (r.checkpoints or {}).get("trainer")
    if r.status != "failed" or not stored:
        return ""
    try:
        path = checkpoints.resolve(proj, stored)
    except LmkError:
        return ""
    if not (path.is_file() or (path.is_dir() and any(path.iterdir()))):
        return ""
    return (f". The training so far is kept in {path}; once the cause is fixed, continue with: "
            f"lmk-studio train {project_arg} --stage {stage} --resume")


def _summary(proj, run_id: int) -> str:
    r = proj.run(run_id)
    m = r.metrics or {}
    bits = [f"run {run_id} ({r.kind}) {r.status}"]
    if "points_written" in m:
        bits.append(f"{m['points_written']} points written")
    if m.get("mean_confidence") is not None:
        bits.append(f"mean confidence {float(m['mean_confidence']):.2f}")
    total = (r.timings or {}).get("total_s")
    if total is not None:
        bits.append(f"{float(total):.0f} s")
    for f in (m.get("faults") or [])[:5]:
        bits.append(f"skipped: {f}")
    for w in m.get("warnings") or []:
        bits.append(f"warning: {w}")
    return "; ".join(bits)


def _preset_for(stage: str, preset: str | None) -> str | None:
    """One --preset for 'all': a bundled name applies to both stages; a JSON file path
    applies to the stage whose keys it has (a Stage I file has 'coarse'/'refine'/'start')."""
    if preset is None or not Path(preset).suffix:
        return preset
    import json

    p = Path(preset).expanduser()
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LmkError(f"{p}: unreadable preset ({exc})") from exc
    if not isinstance(d, dict):
        raise LmkError(f"{p}: a preset must be a JSON object")
    if "stage1" in d or "stage2" in d:       # one file holding both stages' sections
        sec = d.get(f"stage{stage}")
        if sec is None:
            return None
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="lmk_preset_")) / f"{p.stem}-stage{stage}.json"
        out.write_text(json.dumps(sec), encoding="utf-8")
        return str(out)
    is_s1 = any(k in d for k in ("coarse", "refine", "start"))
    return str(p) if (stage == "1") == is_s1 else None


# ---- train -----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from lmk_studio.engine.common import Cancelled, CancelToken

    device = _check_device(args.device)
    from lmk_studio.engine.threads import apply_thread_policy

    apply_thread_policy()  # every core (or $LMK_STUDIO_THREADS), one inter-op thread
    stage = str(args.stage)
    bar = ProgressBar()
    token = CancelToken()
    proj = _open_project(args.project)
    try:
        with _ctrl_c_cancels(token, bar.note):
            try:
                for rid in _train(proj, stage, args.preset, device, bool(args.resume),
                                  args.seed, bar, token):
                    bar.note(_summary(proj, rid))
            except Cancelled:
                bar.note(f"cancelled; the run is checkpointed. Continue it with: lmk-studio train "
                         f"{args.project} --stage {stage} --resume")
                return EXIT_CANCELLED
            except (RuntimeError, ValueError, OSError) as exc:
                # an engine failure in words (the run is recorded as failed in the project)
                raise LmkError(f"{args.project}: training failed: {exc}"
                               f"{_resume_hint(proj, args.project, stage)}") from exc
    finally:
        bar.close()
        proj.close()
    return 0


def _train(proj, stage: str, preset: str | None, device: str, resume: bool,
           seed: int | None, bar: ProgressBar, token) -> list[int]:
    """The engine's run_job (the same job the GUI runs); the CLI only maps its arguments.

    One --preset FILE for 'all' is split per stage by `_preset_for` (run_job wants a mapping)."""
    from lmk_studio.engine.jobs import has_finished_run, run_job

    job = {"1": "stage1", "2": "stage2", "all": "all"}[stage]
    chosen: Any = preset
    if stage == "all" and preset is not None and Path(preset).suffix:
        chosen = {"stage1": _preset_for("1", preset), "stage2": _preset_for("2", preset)}
    if stage == "all" and not has_finished_run(proj, ("classical",)):
        bar.note("no classical preview yet: running it first")
    if stage == "all":
        # the cost before the start: images, trusted sources, steps, estimated time
        from lmk_studio.engine.jobs import plan_job

        bar.note(plan_job(proj, job, chosen, resume=resume, seed=seed)["words"])
    return run_job(proj, job, chosen, device, resume, seed, progress=bar, cancel=token)


# ---- predict ---------------------------------------------------------------------------------
def _add_folder(proj, folder_arg: str, say: Callable[[str], None]) -> list[int]:
    """Add the folder's images to the project; return the ids of all its images (new or
    already in the project) so they are predicted."""
    from lmk_studio.core.images import list_images

    folder = Path(folder_arg).expanduser()
    paths = list_images(folder)
    if not paths:
        raise LmkError(f"{folder}: no supported images in this folder")
    added = proj.add_images(paths)
    known = 0
    for path, problem in getattr(proj, "last_faults", []) or []:
        if problem.startswith("already in the project"):
            known += 1  # not a fault: those images are predicted too, said once below
            continue
        say(f"skipped {path}: {problem}")
    if known:
        say(f"{known} image(s) of {folder} already in the project")
    from lmk_studio.core.images import split_frame

    # a multi-frame DICOM's frames (x.dcm#3) belong to the file the folder lists
    wanted = {Path(p).resolve() for p in paths}
    ids = sorted({r.id for r in proj.images() if split_frame(r.path)[0].resolve() in wanted}
                 | {r.id for r in added})
    if not ids:
        raise LmkError(f"{folder}: none of its images could be added to the project")
    say(f"{len(added)} new image(s) added from {folder}; predicting {len(ids)}")
    return ids


def cmd_predict(args: argparse.Namespace) -> int:
    from lmk_studio.engine.common import Cancelled, CancelToken

    device = _check_device(args.device)
    from lmk_studio.engine.threads import apply_thread_policy

    apply_thread_policy()  # every core (or $LMK_STUDIO_THREADS), one inter-op thread
    bar = ProgressBar()
    token = CancelToken()
    proj = _open_project(args.project)
    try:
        with _ctrl_c_cancels(token, bar.note):
            try:
                from lmk_studio.engine.jobs import run_job

                ids = _add_folder(proj, args.images, bar.note) if args.images else None
                if ids is None and getattr(args, "all", False):
                    ids = [r.id for r in proj.images()]
                job = "classical" if args.method == "classical" else f"predict-{args.method}"
                rids = run_job(proj, job, device=device, progress=bar, cancel=token,
                               images=ids, start=getattr(args, "start", "auto"))
                for rid in rids:
                    bar.note(_summary(proj, rid))
                short = _shortfall(proj, rids[-1]) if rids else None
            except Cancelled:
                bar.note("cancelled; points already in the project are unchanged")
                return EXIT_CANCELLED
            except (RuntimeError, ValueError, OSError) as exc:
                raise LmkError(f"{args.project}: prediction failed: {exc}") from exc
    finally:
        bar.close()
        proj.close()
    if short:
        print(f"lmk-studio: {short}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def _shortfall(proj, run_id: int) -> str | None:
    """Words for a prediction run that wrote fewer points than it set out to, else None.
    "finished; 0 points written" is never reported as success."""
    m = proj.run(run_id).metrics or {}
    exp, got = m.get("expected_points"), m.get("points_written", 0)
    if exp is None:
        return None
    if exp == 0:
        print("nothing to predict: every image already has this model's points (use --all to "
              "predict them again)", file=sys.stderr)
        return None
    if got >= exp:
        return None
    why = m.get("faults") or []
    more = f" (and {len(why) - 5} more)" if len(why) > 5 else ""
    return (f"run {run_id}: only {got} of {exp} points written; " + "; ".join(why[:5]) + more)
