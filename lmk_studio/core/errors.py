"""Errors that carry a message meant for the user (file named, problem stated)."""

from __future__ import annotations

from pathlib import Path


class LmkError(Exception):
    """Base for every error shown to the user as-is (CLI prints it, GUI shows it)."""


class ImageLoadError(LmkError):
    """An image file could not be read; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ProjectError(LmkError):
    """A project file is missing, corrupt, from a newer version, or an edit is invalid."""


class ImportFault(LmkError):
    """A whole import was refused (nothing was written)."""
