"""Checkpoint files of a project: written atomically, read back as tensors and plain data only,
and only from the project's own model folder.

Projects are shared between colleagues and sent to servers, so a project file is untrusted input.
A run row names its checkpoint files; were they read with pickle (`torch.load(weights_only=False)`)
a crafted project could run code on `predict` or `train --resume`. Here every read goes through
`torch.load(weights_only=True)` (tensors, containers, numbers, strings), and every path named by a
run is resolved inside `<project>.models/` (stored relative to it, so a moved project still
finds its models); anything else is refused by name.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmk_studio.core.errors import LmkError

MODELS_SUFFIX = ".models"


def model_dir(project: Any) -> Path:
    """`<project file>.models`: the one folder a project's checkpoints may live in."""
    return Path(str(project.path) + MODELS_SUFFIX)


def to_stored(project: Any, path: Path | str) -> str:
    """The path as a run row keeps it: relative to the model folder, '/'-separated."""
    root = model_dir(project).resolve()
    p = Path(path).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        raise LmkError(f"{p}: a checkpoint must be inside the project's model folder {root}") \
            from None


def resolve(project: Any, stored: str | os.PathLike[str] | None, what: str = "checkpoint"
            ) -> Path:
    """The file a run row names, inside the model folder, or LmkError naming it.

    Relative names are taken under the model folder. An absolute name (written by lmk_studio
    before 0.2, or a project moved since) is re-rooted at its last `*.models` component. Either
    way the result, with links and `..` followed, must stay inside the model folder.
    """
    if stored is None or not isinstance(stored, str | os.PathLike) or not str(stored).strip():
        raise LmkError(f"{project.path}: a run names no usable {what} ({stored!r})")
    root = model_dir(project).resolve()
    p = Path(stored)
    if p.is_absolute():
        cut = [i for i, part in enumerate(p.parts) if part.endswith(MODELS_SUFFIX)]
        if not cut:
            raise LmkError(f"{project.path}: refused {what} {str(stored)!r}: it is outside the "
                           f"project's model folder {root}")
        p = Path(*p.parts[cut[-1] + 1:]) if len(p.parts) > cut[-1] + 1 else Path(".")
    full = (root / p).resolve()
    if full != root and root not in full.parents:
        raise LmkError(f"{project.path}: refused {what} {str(stored)!r}: it points outside the "
                       f"project's model folder {root}")
    return full


def stored_paths(project: Any, paths: Mapping[str, Path | str]) -> dict[str, str]:
    """`to_stored` over a run's checkpoints mapping."""
    return {k: to_stored(project, v) for k, v in paths.items()}


def plain(obj: Any) -> Any:
    """numpy arrays and scalars -> tensors and Python numbers, recursively, so that the file
    loads with `weights_only=True` (which refuses numpy's reconstructors by default)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == np.uint32:  # e.g. numpy's MT19937 key: torch has limited uint32 ops
            obj = obj.astype(np.int64)
        if obj.dtype.kind in "biuf":
            return torch.from_numpy(np.ascontiguousarray(obj))
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


def save(obj: Any, path: Path | str) -> None:
    """torch.save of plain data through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(plain(obj), tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LmkError(f"{path}: cannot write the checkpoint ({exc.strerror or exc})") from exc


# numpy arrays in checkpoints written before `plain` existed: these globals rebuild an array and
# nothing else (torch documents allow-listing them for exactly that)
def _numpy_globals() -> list:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    out: list = [_reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType",
                                             "Int32DType", "UInt32DType", "BoolDType")
                if hasattr(dtypes, n)]
    return out


def load(path: Path | str, map_location: torch.device | str = "cpu") -> Any:
    """Read a checkpoint as tensors and plain data; never runs code from the file.

    Any failure (a pickle that asks for code, a truncated or foreign file) is an LmkError that
    names the file and says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise LmkError(f"{path}: checkpoint file not found (train again to recreate it)")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmkError(f"{path}: refused: not a plain lmk_studio checkpoint (it asks for code or "
                       f"is damaged: {first[:200]}); train again to recreate it") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        raise LmkError(f"{path}: unreadable checkpoint ({type(exc).__name__}: "
                       f"{str(exc)[:200]}); train again to recreate it") from None
