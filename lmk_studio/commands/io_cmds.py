"""`lmk-studio import` and `lmk-studio export`: thin wrappers over core.formats.

import prints the counts and the faults (one per line, "file: label: problem"; past 200, the rest
are counted by problem, so a file of 110,000 bad labels stays readable) and exits 0 when
something was imported (faults are reported, sound data kept); a refused import (nothing
importable, contradictory exemplar) is an ImportFault: message on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import os

from lmk_studio.core.errors import LmkError

_SHOWN = 200  # faults / unknown images printed one per line; the rest are counted


def _open(path: str):
    from lmk_studio.commands.project_cmds import existing_project_path
    from lmk_studio.core.store import Project

    return Project.open(existing_project_path(path))


def cmd_import(args: argparse.Namespace) -> int:
    from lmk_studio.core import formats
    from lmk_studio.core.points import Status

    as_status = getattr(args, "as_status", None)
    status = Status(as_status) if as_status else None
    with _open(args.project) as proj:
        if args.labelme:
            rep = formats.import_labelme(proj, args.labelme, status or Status.ACCEPTED)
        elif args.isbi:
            rep = formats.import_isbi(proj, args.isbi, status or Status.ACCEPTED)
        elif args.csv:
            rep = formats.import_csv(proj, args.csv, status)
        else:  # argparse makes one of them required
            raise LmkError("import: give --labelme, --isbi or --csv")
    print(rep.summary())
    for name in rep.unknown_images[:_SHOWN]:
        print(f"unknown image: {name}")
    if len(rep.unknown_images) > _SHOWN:
        print(f"unknown image: ... and {len(rep.unknown_images) - _SHOWN} more")
    for line in formats.summarise_faults(rep.faults, _SHOWN):
        print(f"fault: {line}")
    for n in rep.notes:
        print(f"note: {n}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Every requested file is built in memory first, then all are written together
    (``fileio.atomic_write_many``): a full disk or a refused target leaves none of them
    written rather than a CSV without its JSON, and a failure while moving them into place
    names those already written."""
    from lmk_studio.core import formats
    from lmk_studio.core.fileio import atomic_write_many

    if not (args.csv or args.json or args.coco):
        raise LmkError("export: give at least one of --csv FILE, --json FILE, --coco FILE")
    if args.wide and not args.csv:
        raise LmkError("export: --wide applies to --csv only")
    reviewed = bool(args.reviewed_only)
    what = "reviewed points" if reviewed else "points"
    items: list[tuple[str, bytes, str]] = []
    lines: list[str] = []
    with _open(args.project) as proj:
        n_img = len(proj.images())
        if args.csv:
            data, n = formats.render_csv(proj, args.csv, wide=bool(args.wide),
                                         reviewed_only=reviewed)
            unit = "image row(s)" if args.wide else f"row(s) of {what}"
            items.append((args.csv, data, "the CSV export"))
            lines.append(f"wrote {n} {unit} ({n_img} images) to {args.csv}")
        if args.json:
            data, n = formats.render_json(proj, args.json, reviewed_only=reviewed)
            items.append((args.json, data, "the JSON export"))
            lines.append(f"wrote {n} {what} of {n_img} images to {args.json}")
        if args.coco:
            data, n = formats.render_coco(proj, args.coco, reviewed_only=reviewed)
            items.append((args.coco, data, "the COCO export"))
            lines.append(f"wrote {n} placed keypoints of {n_img} images (COCO) to {args.coco}")
    paths = [os.path.realpath(p) for p, _, _ in items]
    if len(set(paths)) != len(paths):
        raise LmkError("export: two outputs name the same file; give each its own. "
                       "Nothing was written")
    atomic_write_many(items)
    for line in lines:
        print(line)
    return 0
