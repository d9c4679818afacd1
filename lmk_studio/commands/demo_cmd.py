"""`lmk-studio demo DIR [--n 24]`: write the phantom demo project and say how to open it."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
from pathlib import Path

from lmk_studio.core.errors import LmkError


def _quote(p: Path | str) -> str:
    """Quote a path so the printed command can be pasted into this platform's shell."""
    return subprocess.list2cmdline([str(p)]) if os.name == "nt" else shlex.quote(str(p))


def cmd_demo(args: argparse.Namespace) -> int:
    """Write DIR/demo.lmk (+ images, truth.csv); print the commands to open and evaluate it."""
    from lmk_studio.core.phantoms import write_demo_project

    n = int(getattr(args, "n", 24))
    if n < 2 or n > 2000:
        raise LmkError(f"demo: --n must be between 2 and 2000, not {n}")
    lmk = write_demo_project(Path(args.dir), n=n)
    truth = lmk.parent / "truth.csv"
    print(f"Demo project written: {lmk}")
    print(f"  {n} synthetic X-ray phantoms in {lmk.parent / 'images'}; the first one is the "
          "exemplar, already annotated.")
    print(f"Open it in the app:      lmk-studio {_quote(lmk)}")
    print(f"Instant preview:         lmk-studio predict {_quote(lmk)} --method classical")
    print(f"Compare with the truth:  lmk-studio evaluate {_quote(lmk)} --truth {_quote(truth)}")
    return 0
