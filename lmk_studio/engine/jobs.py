"""One entry point for every engine job, shared by the CLI and the GUI's training process.

`run_job` opens the project once, checks the job and its presets before any work starts (a typo
in a preset name should not cost a finished classical pass), then runs the stage jobs in order.
Qt-free; the stage modules are imported lazily so that asking for the job list is cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmk_studio.core.errors import LmkError
from lmk_studio.engine import runs as _runs
from lmk_studio.engine.common import CancelToken, ProgressCallback, ProgressEvent, no_progress

log = logging.getLogger("lmk_studio.engine.jobs")

#: job name -> words for the user (the GUI's job picker shows these)
JOBS: dict[str, str] = {
    "all": "Everything: classical preview, Stage I, Stage II",
    "classical": "Classical preview (instant)",
    "stage1": "Stage I: learned registration (EGT)",
    "stage2": "Stage II: co-trained detectors (C2T)",
    "predict-stage1": "Predict with the trained Stage I model",
    "predict-stage2": "Predict with the trained Stage II model",
}
#: run kinds each job may create (the process runner uses them to tidy up after a crash)
RUN_KINDS: dict[str, tuple[str, ...]] = {
    "all": ("classical", "stage1", "stage2"),
    "classical": ("classical",),
    "stage1": ("stage1",),
    "stage2": ("stage2",),
    "predict-stage1": ("stage1-predict",),
    "predict-stage2": ("classical", "stage1-predict", "stage2-predict"),
}
#: where `predict-stage2` takes the start points of images that have none yet
PREDICT_STARTS = ("auto", "stage1", "preview")
BUNDLED_PRESETS = ("quick", "cpu", "paper")
_FINISHED = ("finished", "done", "ok", "completed")
#: a ProgressEvent with this stage name announces which step of a job is starting
JOB_STAGE = "job"

Preset = str | Path | Mapping[str, Any] | None


def _is_file_preset(preset: Any) -> bool:
    return isinstance(preset, str | Path) and Path(preset).suffix.lower() == ".json"


def stage_presets(job: str, preset: Preset) -> dict[str, str | None]:
    """The preset each training stage of `job` will use; raises LmkError for a bad combination.

    `preset` is a bundled name ("quick", "cpu", "paper"), a JSON file of one stage, or a mapping
    {"stage1": ..., "stage2": ...}. A single file for "all" is refused: a preset file describes
    one stage, and silently using it for the other would fail late or train the wrong thing.
    """
    if job not in JOBS:
        raise LmkError(f"unknown job {job!r}: use one of {', '.join(JOBS)}")
    stages = {"all": ("stage1", "stage2"), "stage1": ("stage1",), "stage2": ("stage2",)}
    wanted = stages.get(job, ())
    if isinstance(preset, Mapping):
        bad = set(preset) - {"stage1", "stage2"}
        if bad:
            raise LmkError(f"preset mapping: unknown keys {sorted(bad)} (use stage1, stage2)")
        return {s: (None if preset.get(s) is None else str(preset[s])) for s in wanted}
    if job == "all" and _is_file_preset(preset):
        raise LmkError(f"{preset}: a preset file describes one stage; for 'all' pick a bundled "
                       f"preset ({', '.join(BUNDLED_PRESETS)}) or train Stage I and Stage II "
                       "separately with their own files")
    return {s: (None if preset is None else str(preset)) for s in wanted}


def check_presets(job: str, preset: Preset) -> dict[str, str | None]:
    """Load (and so validate) every preset the job needs; LmkError names the bad one."""
    chosen = stage_presets(job, preset)
    if "stage1" in chosen:
        from lmk_studio.engine.stage1 import load_preset as load1

        load1(chosen["stage1"])
    if "stage2" in chosen:
        from lmk_studio.engine.stage2 import load_preset as load2

        load2(chosen["stage2"])
    return chosen


def _open(project: Any):
    if isinstance(project, str | Path):
        from lmk_studio.core.store import Project

        path = Path(project)
        if not path.exists():
            raise LmkError(f"{path}: no such project file")
        return Project.open(path), True
    return project, False


def has_finished_run(project: Any, kinds: Sequence[str]) -> bool:
    """True when the project holds a finished run of one of `kinds`."""
    return any(r.kind in kinds and r.status in _FINISHED for r in project.runs())


def _newest(project: Any, kinds: Sequence[str]):
    runs = [r for r in project.runs() if r.kind in kinds]
    return max(runs, key=lambda r: r.id) if runs else None


def _preview_stale(proj: Any, sig: str, n_trusted: int) -> bool:
    """True when the newest finished preview did not start from the current trusted images
    (a correction was made or undone since). A preview from before fusion recorded no
    signature: stale only if there are trusted images beyond the exemplar now."""
    cl = _runs.newest_finished(proj, ("classical",))
    if cl is None:
        return True
    had = (cl.config or {}).get("trusted_signature")
    return (n_trusted > 1) if had is None else had != sig


def _stage1_stale(proj: Any, sig: str, preset: str | None, seed: int | None) -> bool:
    """True when Stage I must be trained again: none finished, a preview (its start) finished
    after it, the trusted images changed since, or another preset / seed was asked for."""
    s1 = _runs.newest_finished(proj, ("stage1",))
    if s1 is None:
        return True
    cl = _runs.newest_finished(proj, ("classical",))
    cfg = s1.config or {}
    if cl is not None and cl.id > s1.id:
        return True
    if cfg.get("trusted_signature") != sig:
        return True
    if seed is not None and cfg.get("seed") != int(seed):
        return True
    try:
        from lmk_studio.engine.stage1 import load_preset

        name = load_preset(preset).name
    except LmkError:
        return True
    return cfg.get("preset") != name


def _plan(proj: Any, job: str, resume: bool, preset: str | None = None,
          seed: int | None = None) -> list[str]:
    """Steps of the job in order. For "all" (also the app's "Retrain with my corrections"),
    only what changed is re-run: the classical preview when none finished yet or the trusted
    images (exemplar, fully accepted / corrected images: engine.fusion) changed since the newest
    one; Stage I when its start (that preview) or the trusted images changed, or another preset
    or seed is asked for; Stage II always (its labelled set is every trusted point). With
    resume, a Stage I that already finished after being interrupted is not redone."""
    if job != "all":
        return [job]
    from lmk_studio.engine import fusion

    src = fusion.trusted_sources(proj)
    sig = fusion.signature(src)
    steps = ["classical"] if _preview_stale(proj, sig, len(src)) else []
    newest = _newest(proj, ("stage1", "stage2"))
    if resume and newest is not None and newest.kind == "stage2" and newest.status not in _FINISHED:
        s1 = _newest(proj, ("stage1",))
        if s1 is not None and s1.status in _FINISHED:
            log.info("resume: Stage I run %d finished; resuming Stage II", s1.id)
            return steps + ["stage2"]
    if steps or resume or _stage1_stale(proj, sig, preset, seed):
        return steps + ["stage1", "stage2"]
    log.info("Stage I is up to date with the trusted images and its start: not re-trained")
    return ["stage2"]


#: seconds per image when the project has no finished run of a step to measure from (2 cores)
_DEFAULT_S_PER_IMAGE = {"classical": 1.0, "stage1": 3.0, "stage2": 2.5}
#: an extra source costs this fraction of the exemplar's full candidate set (measured ~0.5-0.6)
_EXTRA_SOURCE_COST = 0.6


def plan_job(project: Any, job: str, preset: Preset = None, resume: bool = False,
             seed: int | None = None) -> dict[str, Any]:
    """What `run_job(project, job, preset)` is about to do and roughly how long it will take,
    without doing it: {"steps", "images", "trusted", "targets", "sources_per_target",
    "seconds": {step: s}, "total_s", "words"}. Shown before a start (CLI line, the app's
    confirmation) so a clinician knows what a retrain costs.

    Times are scaled from the project's own newest finished run of each step (per image), else a
    2-core default; the preview's time grows with the sources per target."""
    chosen = check_presets(job, preset)
    proj, owned = _open(project)
    try:
        from lmk_studio.engine import fusion

        steps = _plan(proj, job, resume, chosen.get("stage1"), seed)
        recs = proj.images()
        src = fusion.trusted_sources(proj)
        targets = [r for r in recs if r.id not in src]
        k = min(fusion.DEFAULT_FUSION.k, max(1, len(src)))
        secs: dict[str, float] = {}
        for step in steps:
            kind = {"predict-stage1": "stage1-predict",
                    "predict-stage2": "stage2-predict"}.get(step, step)
            last = _runs.newest_finished(proj, (kind,))
            per = _DEFAULT_S_PER_IMAGE.get(step.replace("predict-", ""), 1.0)
            if last is not None:
                t = (last.timings or {})
                m = (last.metrics or {})
                total = t.get("total_s") or (t.get("train_s", 0) + t.get("predict_s", 0))
                n_img = m.get("images") or 0
                if step == "classical" and t.get("per_image_s"):
                    per = float(t["per_image_s"])
                    nsrc = float(((m.get("fusion") or {}).get("sources_per_target")) or 1.0)
                    per /= 1.0 + _EXTRA_SOURCE_COST * (nsrc - 1.0)
                elif total and n_img:
                    per = float(total) / float(n_img)
            if step == "classical":
                secs[step] = len(targets) * per * (1.0 + _EXTRA_SOURCE_COST * (k - 1))
            else:
                secs[step] = len(recs) * per
        total_s = float(sum(secs.values()))
        words = (f"Plan: {len(recs)} images, {len(src)} trusted (the exemplar"
                 f"{f' + {len(src) - 1} corrected/accepted' if len(src) > 1 else ''}); ")
        parts = []
        for step in steps:
            if step == "classical":
                parts.append(f"preview of {len(targets)} untrusted images from up to {k} "
                             f"trusted image(s) each (~{_mins(secs[step])})")
            else:
                parts.append(f"{JOBS[step].split(':')[0]} (~{_mins(secs[step])})")
        words += ", then ".join(parts) + f"; about {_mins(total_s)} in all"
        return {"steps": steps, "images": len(recs), "trusted": len(src),
                "targets": len(targets), "sources_per_target": k, "seconds": secs,
                "total_s": total_s, "words": words}
    finally:
        if owned:
            proj.close()


def _mins(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def run_job(project_path: Any, job: str, preset: Preset = None, device: str = "auto",
            resume: bool = False, seed: int | None = None,
            progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
            images: Sequence[int] | None = None, start: str = "auto") -> list[int]:
    """Run `job` on the project (a path or an open Project) and return the run ids it wrote.

    Jobs: "classical", "stage1", "stage2", "all" (what changed since the newest runs, see
    `_plan`: the fused classical preview when the trusted images changed, Stage I when its start
    did, then Stage II; the app's "Retrain with my corrections" is this job), "predict-stage1", "predict-stage2". `images` limits the classical
    and predict jobs to those image ids; without it the predict jobs do the images their model
    has not predicted yet. "predict-stage2" first gives start points to the images that have
    none, on those images only: with the trained Stage I model (`start` "stage1", or "auto" when
    one exists) or the classical preview ("preview", fastest). Cancellation raises
    engine.common.Cancelled after the running stage has recorded its run as cancelled.
    """
    chosen = check_presets(job, preset)
    if start not in PREDICT_STARTS:
        raise LmkError(f"unknown start {start!r}: use one of {', '.join(PREDICT_STARTS)}")
    proj, owned = _open(project_path)
    try:
        if job == "predict-stage2":
            planned = _predict_plan(proj, images, start)
        else:
            planned = [(s, images) for s in _plan(proj, job, resume, chosen.get("stage1"),
                                                  seed)]
        steps = [s for s, _ in planned]
        run_ids: list[int] = []
        resumed = False
        for k, (step, step_images) in enumerate(planned):
            if cancel is not None:
                cancel.raise_if_cancelled()
            words = JOBS[step]
            progress(ProgressEvent(stage=JOB_STAGE, epoch=k, epochs=len(steps), step=0, steps=1,
                                   message=f"step {k + 1} of {len(steps)}: {words}"))
            log.info("%s: starting %s (preset %s, device %s%s)", proj.path, step,
                     chosen.get(step, "-"), device, ", resume" if resume else "")
            t0 = time.monotonic()
            # only the first training step resumes: a later stage must not pick up a checkpoint
            # trained on the pseudo-labels of an older run
            step_resume = resume and not resumed and step in ("stage1", "stage2")
            resumed = resumed or step in ("stage1", "stage2")
            run_id = _run_step(proj, step, chosen.get(step), device, step_resume, seed, progress,
                               cancel, step_images)
            run_ids.append(run_id)
            log.info("%s: %s finished as run %d in %.1f s", proj.path, step, run_id,
                     time.monotonic() - t0)
        progress(ProgressEvent(stage=JOB_STAGE, epoch=len(steps), epochs=len(steps), step=0,
                               steps=1, message="done"))
        return run_ids
    finally:
        if owned:
            proj.close()


def _predict_plan(proj: Any, images: Sequence[int] | None, start: str
                  ) -> list[tuple[str, Sequence[int] | None]]:
    """Steps of predict-stage2: start points first, only for the images that lack them."""
    from lmk_studio.engine import runs

    model = runs.newest_finished(proj, ("stage2",))
    if model is None:
        return [("predict-stage2", images)]   # the job itself says "train Stage II first"
    ex_id = proj.exemplar_id
    if images is None:
        ids = runs.needs_prediction(proj, model, "stage2-predict",
                                    [r.id for r in proj.images() if r.id != ex_id])
    else:
        ids = [int(i) for i in images if int(i) != ex_id]
    n = len(proj.template)
    have1, _ = runs.latest_points(proj, ids, n, runs.STAGE1_KINDS)
    steps: list[tuple[str, Sequence[int] | None]] = []
    use_stage1 = start == "stage1" or (
        start == "auto" and runs.newest_finished(proj, ("stage1",)) is not None)
    if start == "stage1" and runs.newest_finished(proj, ("stage1",)) is None:
        raise LmkError(f"{proj.path}: --start stage1 needs a trained Stage I model; train "
                       "Stage I or use --start preview")
    if use_stage1:
        miss = [i for i in ids if i not in have1]
        if miss:
            steps.append(("predict-stage1", miss))
    else:
        have0, _ = runs.latest_points(proj, ids, n, runs.CLASSICAL_KINDS)
        miss = [i for i in ids if i not in have1 and i not in have0]
        if miss:
            steps.append(("classical", miss))
    steps.append(("predict-stage2", ids))
    return steps


def _run_step(proj: Any, step: str, preset: str | None, device: str, resume: bool,
              seed: int | None, progress: ProgressCallback, cancel: CancelToken | None,
              images: Sequence[int] | None) -> int:
    if step == "classical":
        from lmk_studio.engine.classical import run_classical_job

        return run_classical_job(proj, progress=progress, cancel=cancel, images=images)
    if step == "stage1":
        from lmk_studio.engine.stage1 import train_stage1_job

        return train_stage1_job(proj, preset=preset, device=device, resume=resume, seed=seed,
                                progress=progress, cancel=cancel)
    if step == "stage2":
        from lmk_studio.engine.stage2 import train_stage2_job

        return train_stage2_job(proj, preset=preset, device=device, resume=resume, seed=seed,
                                progress=progress, cancel=cancel)
    if step == "predict-stage1":
        from lmk_studio.engine.stage1 import predict_stage1_job

        return predict_stage1_job(proj, device=device, progress=progress, cancel=cancel,
                                  images=images)
    if step == "predict-stage2":
        from lmk_studio.engine.stage2 import predict_stage2_job

        return predict_stage2_job(proj, device=device, progress=progress, cancel=cancel,
                                  images=images)
    raise LmkError(f"unknown job {step!r}")
