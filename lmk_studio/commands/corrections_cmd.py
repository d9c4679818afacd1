"""`lmk-studio suggest-corrections PROJECT [--by help|confidence] [--top N] [--json OUT]`:
which images to correct next.

Every image the clinician corrects in full becomes an exemplar for the others (engine.fusion), so
the order matters: "help" (default) orders the uncorrected images by how much correcting each is
expected to help the rest (greedy coverage of the folder on groupwise-aligned thumbnails:
unlike every current exemplar and like many uncorrected images); "confidence" is the review
queue's order (lowest mean confidence first). The work is engine.fusion.correction_order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmk_studio.core.errors import LmkError


def cmd_suggest_corrections(args: argparse.Namespace) -> int:
    """Print the images to correct first (best first); optionally write the order as JSON."""
    from lmk_studio.commands.project_cmds import existing_project_path
    from lmk_studio.core.store import Project
    from lmk_studio.engine.fusion import correction_order

    path = existing_project_path(args.project)  # `new /x/ceph` wrote /x/ceph.lmk
    if not path.is_file():
        raise LmkError(f"{path}: no such project file")
    top = int(args.top or 0)
    if top < 0:
        raise LmkError(f"suggest-corrections: --top must be 0 (all) or more, not {top}")
    with Project.open(path) as proj:
        order = correction_order(proj, by=args.by)
    print(f"Images to correct next in {path} (by {order['by']}): {len(order['order'])} "
          f"uncorrected, {len(order['trusted'])} trusted (exemplar included), "
          f"{order['seconds']:.1f} s")
    shown = order["order"] if top == 0 else order["order"][:top]
    if shown:
        width = max(5, *(len(r["name"]) for r in shown))
        what = "gain" if order["by"] == "help" else "mean confidence"
        print(f"  {'rank':>4}  {'image':<{width}}  {what}")
        for k, r in enumerate(shown, 1):
            print(f"  {k:>4}  {r['name']:<{width}}  {r['value']:.3f}")
    for name, why in order["skipped"]:
        print(f"  skipped {name}: {why}")
    if args.json:
        out = Path(args.json).expanduser()
        try:
            out.write_text(json.dumps(order, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise LmkError(f"{out}: cannot write ({exc.strerror or exc})") from exc
        print(f"Order written to {out}")
    return 0
