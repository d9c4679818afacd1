"""`python -m lmk_studio` is the same as the `lmk-studio` command."""

from lmk_studio.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
