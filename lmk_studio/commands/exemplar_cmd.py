"""`lmk-studio suggest-exemplar PROJECT [--top N] [--json OUT]`: which image to annotate first.

The work is engine.exemplar.rank_exemplars (OpenCV + numpy, no labels needed); this prints the
ranked table for a person and optionally writes the whole ranking as JSON. PROJECT may also be a
folder of images, so the choice can be made before a project exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmk_studio.core.errors import LmkError


def _collect(target: Path) -> tuple[list[Path], list[int] | None, list[tuple[Path, str]],
                                    str | None]:
    """(paths, image ids or None, missing files with reasons, current exemplar's name)."""
    if target.is_dir():
        from lmk_studio.core.images import list_images

        return list_images(target), None, [], None
    from lmk_studio.core.store import Project

    with Project.open(target) as proj:
        recs = proj.images()
        ex = proj.exemplar_id
    present = [r for r in recs if not r.missing]
    missing = [(r.path, "file missing (moved or deleted)") for r in recs if r.missing]
    ex_name = next((r.name for r in recs if r.id == ex), None)
    return [r.path for r in present], [r.id for r in present], missing, ex_name


def cmd_suggest_exemplar(args: argparse.Namespace) -> int:
    """Rank the project's (or folder's) images as exemplar candidates; print the best --top."""
    from lmk_studio.commands.project_cmds import existing_project_path
    from lmk_studio.engine.exemplar import rank_exemplars

    target = existing_project_path(args.project)  # `new /x/ceph` wrote /x/ceph.lmk
    if not target.exists():
        raise LmkError(f"{target}: no such project file or folder")
    top = int(getattr(args, "top", 10) or 0)
    if top < 0:
        raise LmkError(f"suggest-exemplar: --top must be 0 (all) or more, not {top}")
    paths, ids, missing, ex_name = _collect(target)
    if not paths and not missing:
        raise LmkError(f"{target}: no images to rank")
    ranking = rank_exemplars(paths, ids=ids)
    ranking.skipped[:0] = missing
    cands = ranking.candidates
    print(f"Exemplar candidates for {target}: {len(cands)} image(s) ranked in "
          f"{ranking.seconds:.1f} s" + (f", {len(ranking.skipped)} skipped" if ranking.skipped
                                        else ""))
    if cands:
        shown = cands if top == 0 else cands[:top]
        width = max(5, *(len(c.name) for c in shown))
        print(f"  {'rank':>4}  {'image':<{width}}  {'score':>6}  why")
        for c in shown:
            print(f"  {c.rank:>4}  {c.name:<{width}}  {c.score:6.3f}  {c.why}")
        if len(shown) < len(cands):
            last = cands[-1]
            print(f"  ... {len(cands) - len(shown)} more; last: {last.name} "
                  f"({last.score:.3f}, {last.why})")
    if ranking.skipped:
        print("Skipped:")
        for p, why in ranking.skipped:
            print(f"  {p.name}: {why}")
    if args.json:
        out = Path(args.json).expanduser()
        data = ranking.to_json()
        data["source"] = str(target)
        try:
            out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise LmkError(f"{out}: cannot write ({exc.strerror or exc})") from exc
        print(f"Ranking written to {out}")
    if not cands:
        raise LmkError(f"{target}: none of the images could be read (listed above)")
    best = cands[0]
    print(f"Suggested exemplar: {best.name} ({best.why})")
    if ex_name is not None:
        cur = next((c for c in cands if c.name == ex_name), None)
        where = f"rank {cur.rank} of {len(cands)}" if cur else "not ranked"
        print(f"  (the project's exemplar now is {ex_name}: {where})")
    return 0
