"""Frozen entry point: the same `lmk-studio` command; multiprocessing children must not re-run
the CLI (the GUI's training process is spawned from this executable)."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from lmk_studio.cli import main

    sys.exit(main())
