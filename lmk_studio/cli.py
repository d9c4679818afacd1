"""The `lmk-studio` command. Parsing lives here; the work lives in core/engine functions.

Every handler returns an exit code; an LmkError becomes a one-line message on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lmk_studio import __version__
from lmk_studio.core.errors import LmkError


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmk-studio",
        description="One-shot landmark localisation for X-rays. Without a command, opens the app.",
    )
    p.add_argument("--version", action="version", version=f"lmk_studio {__version__}")
    p.add_argument("--demo", action="store_true", help="open the app on the built-in demo project")
    p.add_argument("--self-test", action="store_true",
                   help="check this installation end to end without a click (phantom project, "
                   "preview, tiny Stage I/II, predict, export, DICOM, window); exit 0 or name "
                   "the failing step")
    sub = p.add_subparsers(dest="command")

    s = sub.add_parser("new", help="create a project from a folder of images")
    s.add_argument("project")
    s.add_argument("--images", required=True, help="folder of images")
    s.add_argument("--template", required=True, help="bundled template name or a JSON file")

    s = sub.add_parser("import", help="import landmarks (labelme, ISBI text, project CSV)")
    s.add_argument("project")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--labelme", help="folder (or file) of labelme JSON point files")
    g.add_argument("--isbi", help="folder (or file) of ISBI 2015 .txt files (x,y per line)")
    g.add_argument("--csv", help="a CSV exported by lmk-studio")
    s.add_argument(
        "--as", dest="as_status", default=None,
        choices=["exemplar", "accepted", "corrected", "predicted"],
        help="status to give imported points (default: accepted for labelme/ISBI, the file's "
             "own status for a project CSV/JSON)",
    )

    s = sub.add_parser("export", help="export landmarks to CSV / JSON / COCO")
    s.add_argument("project")
    s.add_argument("--csv")
    s.add_argument("--wide", action="store_true", help="one row per image instead of per landmark")
    s.add_argument("--json")
    s.add_argument("--coco")
    s.add_argument("--reviewed-only", action="store_true", help="only accepted/corrected/exemplar")

    s = sub.add_parser("evaluate", help="compare the project's points with ground truth")
    s.add_argument("project")
    s.add_argument("--truth", required=True, nargs="+",
                   help="labelme folder(s) (several are averaged), ISBI folder or CSV")
    s.add_argument("--json", help="write the metrics here")
    s.add_argument("--thresholds", default="2,2.5,3,4", help="SDR thresholds (mm, or px if no spacing)")
    s.add_argument("--spacing", type=float, default=None,
                   help="mm per pixel to use where the project has no spacing")
    s.add_argument("--exclude-exemplar", action="store_true", default=True)

    s = sub.add_parser("info", help="summarise a project")
    s.add_argument("project")

    s = sub.add_parser("demo", help="write the phantom demo project into DIR")
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=24, help="number of images")

    s = sub.add_parser("train", help="train Stage I, Stage II or both")
    s.add_argument("project")
    s.add_argument("--stage", default="1", choices=["1", "2", "all"])
    s.add_argument("--preset", default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--seed", type=int, default=None)

    s = sub.add_parser("predict", help="predict landmarks")
    s.add_argument("project")
    s.add_argument("--method", default="stage2", choices=["classical", "stage1", "stage2"])
    s.add_argument("--images", help="a folder of images (new ones are added to the project); "
                   "without it: the images the trained model has not predicted yet")
    s.add_argument("--all", action="store_true",
                   help="predict every image again, also those the model already predicted")
    s.add_argument("--start", default="auto", choices=["auto", "stage1", "preview"],
                   help="stage2: where images without start points get them (auto: the "
                   "trained Stage I model when there is one; preview: fastest)")
    s.add_argument("--device", default="auto")

    s = sub.add_parser("suggest-exemplar",
                       help="rank the images by how well each would serve as the exemplar")
    s.add_argument("project", help="project file (or a folder of images)")
    s.add_argument("--top", type=int, default=10, help="rows to print (0 = all; default 10)")
    s.add_argument("--json", help="write the whole ranking here")

    s = sub.add_parser("suggest-corrections",
                       help="which images to correct next (each corrected image becomes an "
                       "exemplar for the others)")
    s.add_argument("project", help="project file")
    s.add_argument("--by", default="help", choices=["help", "confidence"],
                   help="help: expected help to the uncorrected images (default); "
                   "confidence: lowest confidence first (the review queue)")
    s.add_argument("--top", type=int, default=10, help="rows to print (0 = all; default 10)")
    s.add_argument("--json", help="write the whole order here")
    return p


def _split_project_to_open(argv: list[str]) -> tuple[list[str], str | None]:
    """`lmk-studio PROJECT` opens a project in the app; anything else is a subcommand.

    An optional positional beside subparsers would swallow the command name, so the project
    path is taken off argv here: the first non-option word that is not a known command.
    """
    for k, word in enumerate(argv):
        if word.startswith("-"):
            continue
        if word in _COMMANDS:
            return argv, None
        return argv[:k] + argv[k + 1:], word
    return argv, None


_COMMANDS = ("new", "import", "export", "evaluate", "info", "demo", "train", "predict",
             "suggest-exemplar", "suggest-corrections")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    raw = list(argv) if argv is not None else sys.argv[1:]
    raw, project_to_open = _split_project_to_open(raw)
    args = parser.parse_args(raw)
    try:
        if getattr(args, "self_test", False):
            from lmk_studio.selftest import run_self_test

            return run_self_test()
        if args.command is None:
            from lmk_studio.gui.app import run_app

            return run_app(project=project_to_open, demo=args.demo)
        from lmk_studio import commands

        handler = getattr(commands, f"cmd_{args.command.replace('-', '_')}")
        return int(handler(args) or 0)
    except LmkError as exc:
        print(f"lmk-studio: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmk-studio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
