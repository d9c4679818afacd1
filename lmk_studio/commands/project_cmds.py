"""`lmk-studio new` and `lmk-studio info`: create a project from a folder, summarise one.

Both print plain text meant for a person; user errors are LmkError (the CLI prints them, exit 2).
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime
from pathlib import Path

from lmk_studio.core.errors import LmkError, ProjectError, display_path
from lmk_studio.core.points import Status

_LIST_LIMIT = 20  # longer lists of files are cut with "... and N more"


def _project_path(raw: str) -> Path:
    p = Path(raw).expanduser()
    return p if p.suffix else p.with_suffix(".lmk")


def existing_project_path(raw: str) -> Path:
    """The project a command names: the path as given, or with ".lmk" added when only that
    exists (`new /x/ceph` writes /x/ceph.lmk, so `info /x/ceph` must find it too)."""
    p = Path(raw).expanduser()
    if not p.exists():
        with_suffix = Path(str(p) + ".lmk")
        if p.suffix.lower() != ".lmk" and with_suffix.is_file():
            return with_suffix
    return p


def cmd_new(args: argparse.Namespace) -> int:
    """Create PROJECT from the images in --images with the --template landmarks."""
    from lmk_studio.core.images import list_images
    from lmk_studio.core.store import Project
    from lmk_studio.core.templates import load_template

    path = _project_path(args.project)
    if path.exists():
        raise ProjectError(f"{path}: already exists; choose another name "
                           "(nothing was overwritten)")
    template = load_template(args.template)
    folder = Path(args.images).expanduser()
    if not list_images(folder):  # LmkError for a missing folder
        raise LmkError(f"{folder}: no supported images (PNG, JPEG, BMP, TIFF, DICOM) in "
                       "this folder; nothing was created")
    proj = Project.create(path, template, folder)
    try:
        n = len(proj.images())
        faults = list(proj.last_faults)
    finally:
        proj.close()
    for f, problem in faults:
        print(f"  skipped {display_path(f)}: {problem}")
    if n == 0:
        from lmk_studio.core.store import remove_project_files

        remove_project_files(path)
        raise LmkError(f"{folder}: none of the {len(faults)} image file(s) could be read "
                       "(listed above); nothing was created")
    print(f"Created {display_path(path)}")
    print(f"  template: {template.name} ({len(template)} landmarks)")
    print(f"  images added: {n}" + (f", skipped: {len(faults)} (listed above)" if faults else ""))
    return 0


def _fmt_value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v if len(v) <= 60 else v[:57] + "..."
    return ""


def _metrics_summary(metrics: dict, limit: int = 6) -> str:
    """The scalar entries of a run's metrics, compactly (nested tables are left to `evaluate`)."""
    parts = []
    for k, v in metrics.items():
        s = _fmt_value(v)
        if s:
            parts.append(f"{k}={s}")
    if len(parts) > limit:
        parts = parts[:limit] + [f"(+{len(parts) - limit} more)"]
    return ", ".join(parts)


def _duration(started: str, finished: str | None) -> str:
    if not finished:
        return ""
    try:
        s = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return ""
    return f", {s:.0f} s" if s < 120 else f", {s / 60:.1f} min"


def _when(stamp: str) -> str:
    """'2026-11-25T11:20:57.816+00:00' -> '2026-11-25 11:20 UTC' (as stored if unparsable)."""
    try:
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return stamp


def _files(title: str, paths: list[Path]) -> None:
    if not paths:
        return
    print(f"{title}: {len(paths)}")
    for p in paths[:_LIST_LIMIT]:
        print(f"  {display_path(p)}")
    if len(paths) > _LIST_LIMIT:
        print(f"  ... and {len(paths) - _LIST_LIMIT} more")


def cmd_info(args: argparse.Namespace) -> int:
    """Template, images, exemplar, points by status, runs, spacing sources, missing files."""
    from lmk_studio.core.store import Project

    path = existing_project_path(args.project)
    with Project.open(path) as p:
        t = p.template
        images = p.images()
        ex = p.exemplar_id
        counts = p.status_counts()
        runs = p.runs()
        version = p.schema_version()
    print(f"Project: {display_path(path)} (schema v{version})")
    print(f"Template: {t.name} ({len(t)} landmarks)")
    missing = [r.path for r in images if r.missing]
    changed = [r.path for r in images if r.changed]
    extra = ", ".join(x for x in (f"{len(missing)} missing" if missing else "",
                                  f"{len(changed)} changed" if changed else "") if x)
    print(f"Images: {len(images)}" + (f" ({extra})" if extra else ""))
    by_id = {r.id: r for r in images}
    if ex is None:
        print("Exemplar: none yet (mark the landmarks on one image first)")
    else:
        rec = by_id.get(ex)
        print(f"Exemplar: {rec.name if rec else '?'} (image id {ex})")
    total = len(images) * len(t)
    print(f"Points: {total} slots ({len(images)} images x {len(t)} landmarks)")
    for s in Status:
        print(f"  {s.value:<11} {counts.get(s, 0)}")
    spacing = Counter((r.spacing_source, r.spacing) for r in images)
    print("Pixel spacing (row, col mm/px) by source:")
    if not images:
        print("  (no images)")
    for (src, sp), k in sorted(spacing.items(), key=lambda kv: (kv[0][0] is None, -kv[1])):
        if sp is None:
            print(f"  none (figures in px): {k} image(s)")
        else:
            print(f"  {src}: {sp[0]:g} x {sp[1]:g}: {k} image(s)")
    print(f"Runs: {len(runs)}")
    for r in runs:
        m = _metrics_summary(r.metrics)
        print(f"  #{r.id} {r.kind} {r.status} (started {_when(r.started)}"
              f"{_duration(r.started, r.finished)})" + (f": {m}" if m else ""))
    _files("Missing image files", missing)
    _files("Changed image files (content differs from when added)", changed)
    return 0
