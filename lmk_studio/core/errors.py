"""Errors that carry a message meant for the user (file named, problem stated)."""

from __future__ import annotations

import os
from pathlib import Path


def display_path(p: str | Path) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 (kept by Python as
    surrogate escapes) are shown as ``\\xNN`` instead of breaking the terminal or the GUI."""
    s = os.fspath(p)
    if isinstance(s, bytes):
        return s.decode("utf-8", "backslashreplace")
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


class LmkError(Exception):
    """Base for every error shown to the user as-is (CLI prints it, GUI shows it)."""


class ImageLoadError(LmkError):
    """An image file could not be read; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{display_path(self.path)}: {problem}")


class ProjectError(LmkError):
    """A project file is missing, corrupt, from a newer version, or an edit is invalid."""


class ImportFault(LmkError):
    """A whole import was refused (nothing was written)."""
