"""Landmark templates: an ordered list of named landmarks (name, description, display colour).

The order is the contract: landmark *index* i of every image in a project refers to
``template[i]``. Bundled templates live as JSON under ``resources/templates/`` so users can copy
and edit them; ``load_template`` accepts a bundled name or a path to such a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmk_studio.core.errors import LmkError
from lmk_studio.core.fileio import atomic_write_text, read_regular_bytes
from lmk_studio.core.resources import resource_path

_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
BUNDLED_DIR = ("templates",)
MAX_TEMPLATE_BYTES = 4 * 2**20  # a template of 1,000 landmarks is ~100 KB


@dataclass(frozen=True)
class LandmarkDef:
    name: str
    description: str = ""
    color: str = "#ff5555"


@dataclass
class Template:
    """Ordered landmark definitions; ``description`` is optional free text about the set."""

    name: str
    landmarks: list[LandmarkDef]
    description: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.landmarks)

    def __iter__(self) -> Iterator[LandmarkDef]:
        return iter(self.landmarks)

    def __getitem__(self, i: int) -> LandmarkDef:
        return self.landmarks[i]

    @property
    def names(self) -> list[str]:
        return [lm.name for lm in self.landmarks]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        d["landmarks"] = [
            {"name": lm.name, "description": lm.description, "color": lm.color}
            for lm in self.landmarks
        ]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Template:
        """Parse the JSON form; every problem is an LmkError naming the offending entry."""
        if not isinstance(d, dict):
            raise LmkError("template: expected a JSON object with 'name' and 'landmarks'")
        name = d.get("name")
        if not isinstance(name, str) or not name.strip():
            raise LmkError("template: 'name' must be a non-empty string")
        raw = d.get("landmarks")
        if not isinstance(raw, list):
            raise LmkError(f"template {name!r}: 'landmarks' must be a list")
        lms: list[LandmarkDef] = []
        for i, item in enumerate(raw):
            if isinstance(item, str):  # a bare list of names is accepted for convenience
                item = {"name": item}
            if not isinstance(item, dict):
                raise LmkError(f"template {name!r}: landmark {i + 1} must be an object or a name")
            lname = item.get("name")
            if not isinstance(lname, str) or not lname.strip():
                raise LmkError(f"template {name!r}: landmark {i + 1} has no name")
            desc = item.get("description", "")
            if not isinstance(desc, str):
                raise LmkError(f"template {name!r}: landmark {lname!r}: description must be text")
            color = item.get("color") or _default_color(i)
            if not isinstance(color, str) or not _COLOR_RE.match(color):
                raise LmkError(
                    f"template {name!r}: landmark {lname!r}: colour {color!r} is not #rrggbb"
                )
            lms.append(LandmarkDef(lname.strip(), desc, color.lower()))
        desc_t = d.get("description", "")
        t = cls(name.strip(), lms, desc_t if isinstance(desc_t, str) else "")
        t.validate()
        return t

    def validate(self) -> None:
        if not self.name or not self.name.strip():
            raise LmkError("template: name is empty")
        if not self.landmarks:
            raise LmkError(f"template {self.name!r}: has no landmarks")
        seen: dict[str, int] = {}
        for i, lm in enumerate(self.landmarks):
            if not lm.name.strip():
                raise LmkError(f"template {self.name!r}: landmark {i + 1} has an empty name")
            key = lm.name.strip().casefold()
            if key in seen:
                raise LmkError(
                    f"template {self.name!r}: landmark name {lm.name!r} is used twice "
                    f"(positions {seen[key] + 1} and {i + 1})"
                )
            seen[key] = i
            if not _COLOR_RE.match(lm.color):
                raise LmkError(
                    f"template {self.name!r}: landmark {lm.name!r}: colour {lm.color!r} "
                    "is not #rrggbb"
                )


def _default_color(i: int) -> str:
    """Distinct colours for templates that give none: golden-angle hues, full saturation."""
    import colorsys

    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _bundled_dir() -> Path:
    return resource_path(*BUNDLED_DIR)


def bundled_templates() -> dict[str, Template]:
    """Every JSON under resources/templates, keyed by file stem (e.g. "isbi2015-ceph-19")."""
    out: dict[str, Template] = {}
    d = _bundled_dir()
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        out[p.stem] = _read(p)
    return out


def _read(path: Path) -> Template:
    """A template JSON file; every problem (not a regular file, too large, not JSON, nested
    too deeply, wrong shape) is an LmkError naming the file, never a traceback or a hang."""
    try:
        text = read_regular_bytes(path, MAX_TEMPLATE_BYTES, "template file").decode("utf-8")
    except FileNotFoundError:
        raise LmkError(f"{path}: template file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LmkError(f"{path}: cannot read template ({e})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise LmkError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise LmkError(f"{path}: not a usable template: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise LmkError(f"{path}: not usable JSON ({str(e)[:120]})") from None
    try:
        return Template.from_dict(d)
    except LmkError as e:
        raise LmkError(f"{path}: {e}") from None
    except (TypeError, KeyError, AttributeError, ValueError, RecursionError) as e:
        raise LmkError(f"{path}: not a landmark template ({type(e).__name__}: "
                       f"{str(e)[:120]})") from None


def load_template(name_or_path: str | Path) -> Template:
    """A bundled template by name (``"hand-37"``) or a JSON file path; LmkError otherwise."""
    s = str(name_or_path)
    bundled = _bundled_dir() / f"{s}.json"
    if not isinstance(name_or_path, Path) and "/" not in s and "\\" not in s and bundled.is_file():
        return _read(bundled)
    p = Path(name_or_path)
    if p.is_file():
        return _read(p)
    names = sorted(q.stem for q in _bundled_dir().glob("*.json")) if _bundled_dir().is_dir() else []
    raise LmkError(
        f"template {s!r}: neither a bundled template ({', '.join(names) or 'none found'}) "
        "nor an existing JSON file"
    )


def save_template(t: Template, path: str | Path) -> None:
    """Validate, then write atomically (temp file in the same folder + fsync + replace)."""
    t.validate()
    path = Path(path)
    data = json.dumps(t.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(path, data, what="template")
