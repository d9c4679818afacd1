"""Import and export of landmark points: labelme, ISBI 2015 text, the project's CSV/JSON, COCO.

Rules every reader and writer here follows:

- **Coordinates.** The store keeps float pixels with the origin at the *centre* of the top-left
  pixel (core.points). labelme draws pixel (0, 0) over [0, 1) x [0, 1), so a click in the middle of
  that pixel is (0.5, 0.5): labelme coordinates are shifted by ``LABELME_PIXEL_OFFSET`` (-0.5) on
  import. ISBI 2015 text files and COCO keypoints hold pixel indices (centre convention): no shift.
  The project's own CSV/JSON store the store's values unchanged (exact round trip).
- **Faults** are reported per file and label as ``"file: label: problem"`` (``Fault`` is a ``str``
  that also carries ``.file``, ``.label`` and ``.problem``). Sound data of a faulty file is kept.
- **Duplicated labels**: the copies are kept (as their mean) only when they all lie within
  ``DUPLICATE_TOLERANCE_PX`` (1 px) of each other; otherwise neither copy is kept, because there is
  no way to tell which one the annotator meant (a mislabelled point shows up as a duplicate of one
  label plus a missing other label; both are reported).
- **Imports are all-or-nothing**: every file is read and validated first, then all sound points
  are written with one ``Project.set_points`` call (one transaction). Nothing is written when
  nothing is importable or when the import is contradictory (e.g. two exemplar images).
- **Exports are atomic**: the whole file is built in memory, written to a temporary file in the
  target folder, fsync'ed and moved over the target with ``os.replace``; a failed write (full
  disk, permissions) leaves the previous file untouched and names the file and the problem.
- **Spreadsheet formulas**: a text cell starting with ``= + - @``, tab or CR (or with an
  apostrophe, to keep the escaping reversible) is written with a leading apostrophe; numbers,
  including negative coordinates, are written as plain numbers. Import removes the apostrophe.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmk_studio.core.errors import ImportFault, LmkError
from lmk_studio.core.fileio import (  # noqa: F401 (atomic_write_text re-exported)
    FileRefused,
    atomic_write_bytes,
    atomic_write_text,
    read_regular_bytes,
)
from lmk_studio.core.points import LandmarkPoint, Source, Status

LABELME_PIXEL_OFFSET = -0.5
DUPLICATE_TOLERANCE_PX = 1.0
# Bounds that keep one annotation file under ~10 s and well under 1 GB (training/
# bench_hostile_inputs.py): parsed JSON takes up to ~10x its size in memory, and a row or
# shape costs ~25-35 us. 150,000 points is 7,900 images of 19 landmarks.
MAX_ANNOTATION_BYTES = 32 * 2**20
MAX_ANNOTATION_ITEMS = 150_000
FAULTS_SHOWN = 20  # a refused import's message lists this many faults, then counts the rest
JSON_FORMAT = "lmk_studio-points"
JSON_VERSION = 1
HAMEDAN_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "hamedan_ceph"

LONG_COLUMNS = (
    "image", "landmark_index", "landmark_name", "x_px", "y_px", "x_mm", "y_mm",
    "spacing_source", "status", "source", "confidence", "expected_error_px", "run_id",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_L_LABEL = re.compile(r"^[lL](\d+)$")


# ---- faults and reports --------------------------------------------------------------------
class Fault(str):
    """One problem in one file: ``"file: label: problem"``; attributes for programmatic checks."""

    file: str
    label: str
    problem: str

    def __new__(cls, file: str, label: str, problem: str) -> Fault:
        s = super().__new__(cls, f"{file}: {label}: {problem}")
        s.file, s.label, s.problem = str(file), str(label), str(problem)
        return s

    def __reduce__(self):  # keep pickling (multiprocessing) working for the str subclass
        return (Fault, (self.file, self.label, self.problem))


@dataclass
class ImportReport:
    """What an import did: counts, the images it could not match, every fault."""

    source: str
    kind: str
    files_read: int = 0
    images_matched: int = 0
    imported: int = 0  # placed points written
    absent: int = 0  # "absent" marks written
    replaced: int = 0  # of those, positions that already held a placed point
    replaced_trusted: int = 0  # ... that was exemplar/accepted/corrected
    unknown_images: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = (
            f"{self.kind} import from {self.source}: {self.files_read} file(s) read, "
            f"{self.images_matched} image(s) matched, {self.imported} point(s) imported"
        )
        if self.absent:
            s += f", {self.absent} marked absent"
        if self.replaced:
            s += f"; {self.replaced} existing point(s) replaced ({self.replaced_trusted} reviewed)"
        s += f"; {len(self.unknown_images)} unknown image(s); {len(self.faults)} fault(s)"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "kind": self.kind, "files_read": self.files_read,
            "images_matched": self.images_matched, "imported": self.imported,
            "absent": self.absent, "replaced": self.replaced,
            "replaced_trusted": self.replaced_trusted, "unknown_images": self.unknown_images,
            "faults": [str(f) for f in self.faults], "notes": self.notes,
        }


@dataclass
class ParsedPoint:
    """A point read from a file, before it is matched to a project image."""

    image: str
    index: int
    x: float | None
    y: float | None
    status: Status | None = None
    source: Source | None = None
    confidence: float | None = None
    expected_error_px: float | None = None
    run_id: int | None = None
    where: str = ""  # "file: row N" for messages


# ---- small helpers -------------------------------------------------------------------------
def _names(template: Any) -> list[str]:
    """Landmark names of a Template (or of a plain sequence of names)."""
    if hasattr(template, "names"):
        return list(template.names)
    return [str(n) for n in template]


def _label_index(label: str, names: Sequence[str]) -> int | None:
    """A landmark name (case-insensitive) or 'l<k>' (1-based) -> 0-based index, else None."""
    s = label.strip()
    key = s.casefold()
    for i, n in enumerate(names):
        if n.strip().casefold() == key:
            return i
    m = _L_LABEL.match(s)
    if m:
        k = int(m.group(1))
        return k - 1 if 1 <= k <= len(names) else None
    return None


def escape_cell(s: str) -> str:
    """Neutralise spreadsheet formulas in a text cell (reversible, see ``unescape_cell``)."""
    if s and (s.startswith(_FORMULA_START) or (s[0] == "'" and s[1:2] and (
            s[1:].startswith(_FORMULA_START) or s[1] == "'"))):
        return "'" + s
    return s


def unescape_cell(s: str) -> str:
    if len(s) > 1 and s[0] == "'" and (s[1:].startswith(_FORMULA_START) or s[1] == "'"):
        return s[1:]
    return s


def _fmt_float(v: float | None) -> str:
    """repr precision (shortest string that reads back to the same float)."""
    return "" if v is None else repr(float(v))


def _finite(v: Any) -> float | None:
    """A finite float from a JSON number, else None (bools are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range
        return None
    return f if math.isfinite(f) else None


def _read_text(path: Path, display: str) -> tuple[str | None, Fault | None]:
    """The file as text, or a Fault: only regular files (a FIFO would block for ever) of at
    most MAX_ANNOTATION_BYTES."""
    try:
        return read_regular_bytes(path, MAX_ANNOTATION_BYTES, "annotation file").decode(
            "utf-8-sig"), None
    except FileRefused as e:
        return None, Fault(display, "-", e.problem)
    except FileNotFoundError:
        return None, Fault(display, "-", "file not found")
    except UnicodeDecodeError as e:
        return None, Fault(display, "-", f"not UTF-8 text (byte {e.start})")
    except OSError as e:
        return None, Fault(display, "-", f"cannot read ({e.strerror or e})")


def _load_json(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, the problem in words): never a traceback, whatever the text.

    json.loads raises more than JSONDecodeError on hostile input: ValueError for an integer
    of more than 4300 digits, RecursionError for deeply nested arrays.
    """
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    except RecursionError:
        return None, "not usable JSON: nested too deeply"
    except (ValueError, OverflowError) as e:
        return None, f"not usable JSON ({str(e)[:120]})"


def summarise_faults(faults: Sequence[str], limit: int = FAULTS_SHOWN) -> list[str]:
    """The first ``limit`` faults, then one line counting the rest by problem: 110,000 unknown
    labels make a readable message instead of ten megabytes of it."""
    lines = [str(f) for f in faults[:limit]]
    rest = faults[limit:]
    if rest:
        by_problem: dict[str, int] = {}
        for f in rest:
            key = getattr(f, "problem", None) or str(f)
            by_problem[key] = by_problem.get(key, 0) + 1
        top = sorted(by_problem.items(), key=lambda kv: -kv[1])[:3]
        kinds = "; ".join(f"{n} x {p[:100]}" for p, n in top)
        more = len(by_problem) - len(top)
        lines.append(f"... and {len(rest)} more fault(s): {kinds}"
                     + (f"; {more} other kind(s)" if more > 0 else ""))
    return lines


def _convex_hull(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Andrew's monotone chain, counter-clockwise, collinear points dropped."""
    pts = sorted(set(pts))
    if len(pts) <= 2:
        return pts

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def point_spread(xy: np.ndarray) -> float:
    """Largest distance between any two of the (n, 2) points, in O(n log n).

    The plain pairwise maximum is quadratic: 3,000 copies of a label took 34 s and 110,000
    never finished. Small sets still use it (exact, vectorised); larger ones use the convex
    hull, whose farthest pair is the set's, found by rotating calipers.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 2:
        return 0.0
    if len(xy) <= 256:
        d = xy[:, None, :] - xy[None, :, :]
        with np.errstate(over="ignore"):  # 1e308 apart: inf, which is "far apart" all right
            return float(np.sqrt((d ** 2).sum(-1)).max())
    hull = _convex_hull([(float(a), float(b)) for a, b in xy])
    n = len(hull)
    if n <= 256:
        return point_spread(np.asarray(hull))
    h = np.asarray(hull)

    def area(i: int, j: int, k: int) -> float:
        return abs((h[j, 0] - h[i, 0]) * (h[k, 1] - h[i, 1])
                   - (h[j, 1] - h[i, 1]) * (h[k, 0] - h[i, 0]))

    best, j = 0.0, 1
    for i in range(n):
        ni = (i + 1) % n
        while area(i, ni, (j + 1) % n) > area(i, ni, j):
            j = (j + 1) % n
        best = max(best, float(np.hypot(*(h[i] - h[j]))), float(np.hypot(*(h[ni] - h[j]))))
    return best


def _resolve_duplicates(
    cands: dict[int, list[tuple[float, float, str]]], display: str, offset: float = 0.0,
) -> tuple[dict[int, tuple[float, float]], list[Fault]]:
    """Apply the duplicate rule: mean if all copies within 1 px, else drop all copies.

    Candidates hold the file's own coordinates (quoted in messages); ``offset`` is added after.
    """
    out: dict[int, tuple[float, float]] = {}
    faults: list[Fault] = []
    for idx, lst in sorted(cands.items()):
        if len(lst) == 1:
            out[idx] = (lst[0][0] + offset, lst[0][1] + offset)
            continue
        xy = np.array([(a, b) for a, b, _ in lst], dtype=np.float64)
        spread = point_spread(xy)
        where = ", ".join(f"({a:.1f}, {b:.1f})" for a, b in xy[:5]) + (
            f" and {len(xy) - 5} more" if len(xy) > 5 else "")
        if spread <= DUPLICATE_TOLERANCE_PX:
            out[idx] = (float(xy[:, 0].mean()) + offset, float(xy[:, 1].mean()) + offset)
            faults.append(Fault(display, lst[0][2], (
                f"duplicate label: {len(lst)} points within {spread:.2f} px of each other; "
                "their mean is kept")))
        else:
            faults.append(Fault(display, lst[0][2], (
                f"duplicate label: {len(lst)} points {spread:.1f} px apart at {where}; "
                "ambiguous, none kept")))
    return out, faults


# ---- labelme -------------------------------------------------------------------------------
@dataclass
class _LabelmeFile:
    points: dict[int, tuple[float, float]]
    faults: list[Fault]
    image_path: str | None = None
    size: tuple[int, int] | None = None  # (width, height) as the file states it
    readable: bool = True


def _parse_labelme(
    path: Path, names: Sequence[str], display: str,
    image_size: tuple[int, int] | None = None, pixel_offset: float = LABELME_PIXEL_OFFSET,
) -> _LabelmeFile:
    text, fault = _read_text(path, display)
    if text is None:
        return _LabelmeFile({}, [fault] if fault else [], readable=False)
    d, problem = _load_json(text)
    if problem is not None:
        return _LabelmeFile({}, [Fault(display, "-", problem)], readable=False)
    if not isinstance(d, dict) or not isinstance(d.get("shapes"), list):
        return _LabelmeFile(
            {}, [Fault(display, "-", "not a labelme file (no 'shapes' list)")], readable=False)
    if len(d["shapes"]) > MAX_ANNOTATION_ITEMS:
        return _LabelmeFile({}, [Fault(display, "-", (
            f"{len(d['shapes'])} shapes, more than the {MAX_ANNOTATION_ITEMS} one file may "
            "hold; refused"))], readable=False)
    faults: list[Fault] = []
    ip = d.get("imagePath")
    image_path = ip if isinstance(ip, str) and ip.strip() else None
    w, h = d.get("imageWidth"), d.get("imageHeight")
    stated = (w, h) if (isinstance(w, int) and isinstance(h, int) and 0 < w < 2**31
                        and 0 < h < 2**31) else None
    if image_size is not None and stated is not None and tuple(stated) != tuple(image_size):
        faults.append(Fault(display, "-", (
            f"file states a {stated[0]}x{stated[1]} image but the image is "
            f"{image_size[0]}x{image_size[1]}: coordinates would be wrong, no point imported")))
        return _LabelmeFile({}, faults, image_path, stated, readable=True)
    bounds = image_size or stated
    folded = {n.strip().casefold() for n in names}
    use_l = any(  # name missing labels "l<k>" when the file itself uses that style
        isinstance(s, dict) and isinstance(s.get("label"), str)
        and _L_LABEL.match(s["label"].strip()) and s["label"].strip().casefold() not in folded
        for s in d["shapes"])
    cands: dict[int, list[tuple[float, float, str]]] = {}
    seen: set[int] = set()
    for i, s in enumerate(d["shapes"]):
        if not isinstance(s, dict):
            faults.append(Fault(display, f"shape {i + 1}", "not an object; skipped"))
            continue
        label = s.get("label")
        if not isinstance(label, str) or not label.strip():
            faults.append(Fault(display, f"shape {i + 1}", "no label; skipped"))
            continue
        label = label.strip()
        idx = _label_index(label, names)
        if idx is not None:
            seen.add(idx)
        stype = s.get("shape_type", "point")
        if stype != "point":
            faults.append(Fault(display, label, f"{stype!r} shape, not a point; skipped"))
            continue
        if idx is None:
            faults.append(Fault(display, label, (
                f"unknown label (neither l1..l{len(names)} nor a landmark name); skipped")))
            continue
        pts = s.get("points")
        if (not isinstance(pts, list) or len(pts) != 1 or not isinstance(pts[0], list | tuple)
                or len(pts[0]) != 2):
            faults.append(Fault(display, label, "malformed point (need one [x, y]); skipped"))
            continue
        x, y = _finite(pts[0][0]), _finite(pts[0][1])
        if x is None or y is None:
            faults.append(Fault(display, label, f"coordinates {pts[0]!r} are not numbers; skipped"))
            continue
        if bounds is not None and not (0.0 <= x <= bounds[0] and 0.0 <= y <= bounds[1]):
            faults.append(Fault(display, label, (
                f"point ({x:.1f}, {y:.1f}) lies outside the {bounds[0]}x{bounds[1]} image; "
                "skipped")))
            continue
        cands.setdefault(idx, []).append((x, y, label))
    points, dup_faults = _resolve_duplicates(cands, display, pixel_offset)
    faults += dup_faults
    dups = [lst[0][2] for lst in cands.values() if len(lst) > 1]
    for k in range(len(names)):
        if k not in seen:
            hint = (f" ({', '.join(dups)} {'is' if len(dups) == 1 else 'are'} duplicated: "
                    "one of those points may be this landmark, mislabelled)") if dups else ""
            faults.append(Fault(display, f"l{k + 1}" if use_l else names[k],
                                "missing label" + hint))
    return _LabelmeFile(points, faults, image_path, stated)


def read_labelme_points(
    path: str | Path, template: Any, *, image_size: tuple[int, int] | None = None,
    display: str | None = None, pixel_offset: float = LABELME_PIXEL_OFFSET,
) -> tuple[dict[int, tuple[float, float]], list[Fault]]:
    """Sound points of one labelme file as {index: (x, y)} (store convention) + its faults.

    ``template``: a Template or a list of landmark names (labels map by "l<k>" or name).
    ``image_size`` (width, height) of the real image, when known, is checked against the file.
    """
    p = Path(path)
    r = _parse_labelme(p, _names(template), display or str(p), image_size, pixel_offset)
    return r.points, r.faults


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".json")


def average_labelme_truth(
    folders: Sequence[str | Path], template: Any, names: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, list[Fault]]:
    """Mean of several annotators' labelme folders, matched by file stem.

    Where an annotator's point is missing or faulty, the others' are used alone (Hamedan README
    protocol); NaN where nobody has a sound point. Returns (stems, (M, N, 2), faults); faults are
    named "<folder name>/<file>". ``names`` (stems) fixes the order and set, else the union.
    """
    lm = _names(template)
    per_folder: list[dict[str, dict[int, tuple[float, float]]]] = []
    faults: list[Fault] = []
    for f in folders:
        folder = Path(f)
        if not folder.is_dir():
            raise LmkError(f"{folder}: truth folder not found")
        files = _json_files(folder)
        if not files:
            raise LmkError(f"{folder}: no labelme .json files in this folder")
        got: dict[str, dict[int, tuple[float, float]]] = {}
        for p in files:
            r = _parse_labelme(p, lm, f"{folder.name}/{p.name}")
            faults += r.faults
            got[p.stem] = r.points
        per_folder.append(got)
    stems = list(names) if names is not None else sorted(set().union(*per_folder))
    truth = np.full((len(stems), len(lm), 2), np.nan)
    for i, stem in enumerate(stems):
        for k in range(len(lm)):
            xy = [d[stem][k] for d in per_folder if stem in d and k in d[stem]]
            if xy:
                truth[i, k] = np.mean(np.asarray(xy, dtype=np.float64), axis=0)
    return stems, truth, faults


def hamedan_truth(root: str | Path = HAMEDAN_ROOT) -> tuple[list[str], np.ndarray, list[Fault]]:
    """Hamedan ground truth = mean of the two doctors (README protocol), (120, 19, 2), px.

    Names are the image file names of ``root/images`` ("001.png" ...). Where one doctor's file is
    faulty for a landmark, the other doctor's point is used alone; NaN where neither is sound.
    Coordinates are in the store convention (labelme's +0.5 pixel-corner origin removed).
    """
    root = Path(root)
    ann = root / "annotations"
    if not ann.is_dir():
        raise LmkError(f"{ann}: Hamedan annotations folder not found")
    doctors = sorted(p for p in ann.iterdir() if p.is_dir())
    if not doctors:
        raise LmkError(f"{ann}: no annotator folders")
    images = sorted(p.name for p in (root / "images").glob("*.png"))
    stems = [Path(n).stem for n in images] if images else None
    lm = [f"l{k}" for k in range(1, 20)]
    stems_out, truth, faults = average_labelme_truth(doctors, lm, stems)
    names = images if images else [f"{s}.png" for s in stems_out]
    return names, truth, faults


# ---- ISBI 2015 text ------------------------------------------------------------------------
def read_isbi_points(
    path: str | Path, n: int, *, display: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[dict[int, tuple[float, float]], list[Fault]]:
    """First ``n`` lines "x,y" (pixel indices); lines after the landmarks are ignored."""
    p = Path(path)
    disp = display or str(p)
    text, fault = _read_text(p, disp)
    if text is None:
        return {}, [fault] if fault else []
    lines = text.splitlines()
    pts: dict[int, tuple[float, float]] = {}
    faults: list[Fault] = []
    for k in range(n):
        label = f"l{k + 1}"
        if k >= len(lines):
            faults.append(Fault(disp, label, f"missing (the file has only {len(lines)} line(s))"))
            continue
        parts = [q.strip() for q in re.split(r"[,;\s]+", lines[k].strip()) if q.strip()]
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError
        except ValueError:
            faults.append(Fault(disp, label, f"line {k + 1} {lines[k][:40]!r} is not 'x,y'; skipped"))
            continue
        if image_size is not None and not (
                -0.5 <= x <= image_size[0] - 0.5 and -0.5 <= y <= image_size[1] - 0.5):
            faults.append(Fault(disp, label, (
                f"point ({x:g}, {y:g}) lies outside the {image_size[0]}x{image_size[1]} image; "
                "skipped")))
            continue
        pts[k] = (x, y)
    return pts, faults


# ---- project CSV / JSON parsing ------------------------------------------------------------
def _opt_float(cell: str, decimal_comma: bool = False) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    if decimal_comma and "," in cell and "." not in cell:
        cell = cell.replace(",", ".")
    v = float(cell)
    if not math.isfinite(v):
        raise ValueError(cell)
    return v


def _csv_rows(text: str, disp: str) -> tuple[list[list[str]], str]:
    """Rows with the delimiter that gives an 'image' column: ',' or, as spreadsheets in many
    locales save it, ';' (then with decimal commas) or tab."""
    first = text.split("\n", 1)[0]
    try:
        for delim in (",", ";", "\t"):
            head = next(csv.reader([first], delimiter=delim), [])
            if any(unescape_cell(h).strip().casefold() == "image" for h in head):
                break
        else:
            delim = ","
        return list(csv.reader(io.StringIO(text, newline=""), delimiter=delim)), delim
    except csv.Error as e:
        raise ImportFault(f"{disp}: not a readable CSV ({e})") from None


def _parse_csv(path: Path, names: Sequence[str]) -> tuple[list[ParsedPoint], list[Fault], str]:
    """Rows of a long or wide project CSV -> ParsedPoints (+ faults, detected layout)."""
    disp = str(path)
    text, fault = _read_text(path, disp)
    if text is None:
        raise ImportFault(str(fault))
    n_lines = text.count("\n")
    if n_lines > MAX_ANNOTATION_ITEMS + 1:
        raise ImportFault(f"{disp}: {n_lines} lines, more than the {MAX_ANNOTATION_ITEMS} rows "
                          "one file may hold (split it); nothing was imported")
    rows, delim = _csv_rows(text, disp)
    dc = delim != ","  # a ';' or tab file from a spreadsheet may use decimal commas
    if not rows:
        raise ImportFault(f"{disp}: empty file")
    header = [unescape_cell(h).strip() for h in rows[0]]
    col = {h.casefold(): i for i, h in enumerate(header)}
    if "image" not in col:
        raise ImportFault(f"{disp}: no 'image' column (header: {', '.join(header)[:200]})")
    out: list[ParsedPoint] = []
    faults: list[Fault] = []

    def cell(r: list[str], name: str) -> str:
        i = col.get(name)
        return unescape_cell(r[i]) if i is not None and i < len(r) else ""

    if "x_px" in col and "y_px" in col:
        if "landmark_name" not in col and "landmark_index" not in col:
            raise ImportFault(f"{disp}: long format needs 'landmark_name' or 'landmark_index'")
        for rn, r in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in r):
                continue
            where = f"row {rn}"
            image = cell(r, "image")  # as written: a name may start with a space or tab
            if not image.strip():
                faults.append(Fault(disp, where, "no image name; skipped"))
                continue
            lname, lidx = cell(r, "landmark_name").strip(), cell(r, "landmark_index").strip()
            idx = _label_index(lname, names) if lname else None
            if idx is None and lname and not lidx:
                faults.append(Fault(disp, f"{where} {lname}", "unknown landmark; skipped"))
                continue
            if idx is None:
                try:
                    idx = int(lidx)
                except ValueError:
                    idx = -1
                if not 0 <= idx < len(names):
                    faults.append(Fault(disp, f"{where} {lname or lidx}", (
                        f"unknown landmark (index {lidx!r}, name {lname!r}); skipped")))
                    continue
            label = f"{where} {names[idx]}"
            st_s, so_s = cell(r, "status").strip(), cell(r, "source").strip()
            try:
                status = Status(st_s) if st_s else None
            except ValueError:
                faults.append(Fault(disp, label, f"unknown status {st_s!r}; skipped"))
                continue
            try:
                source = Source(so_s) if so_s else None
            except ValueError:
                faults.append(Fault(disp, label, f"unknown source {so_s!r}; skipped"))
                continue
            if status is Status.UNLABELLED:
                continue
            try:
                x, y = _opt_float(cell(r, "x_px"), dc), _opt_float(cell(r, "y_px"), dc)
                conf = _opt_float(cell(r, "confidence"), dc)
                eerr = _opt_float(cell(r, "expected_error_px"), dc)
                rid_s = cell(r, "run_id").strip()
                rid = int(rid_s) if rid_s else None
            except ValueError:
                faults.append(Fault(disp, label, "a number cell is not a finite number; skipped"))
                continue
            if status is Status.ABSENT:
                x = y = None
            elif x is None or y is None:
                faults.append(Fault(disp, label, "no coordinates; skipped"))
                continue
            out.append(ParsedPoint(image, idx, x, y, status, source, conf, eerr, rid,
                                   where=f"{disp}: {where}"))
        return out, faults, "long"

    # wide: image, <name>_x, <name>_y ...
    pairs: dict[int, tuple[int, int]] = {}
    for h, i in col.items():
        if h.endswith("_x"):
            j = col.get(h[:-2] + "_y")
            k = _label_index(header[i][:-2], names)
            if j is not None and k is not None:
                pairs[k] = (i, j)
    if not pairs:
        raise ImportFault(
            f"{disp}: neither the long layout (image, landmark_name, x_px, y_px, ...) nor the "
            "wide one (image, <landmark>_x, <landmark>_y, ...)")
    for rn, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        image = cell(r, "image")
        if not image.strip():
            faults.append(Fault(disp, f"row {rn}", "no image name; skipped"))
            continue
        for k, (i, j) in sorted(pairs.items()):
            xs = r[i].strip() if i < len(r) else ""
            ys = r[j].strip() if j < len(r) else ""
            if not xs and not ys:
                continue
            if xs.casefold() == "absent" and ys.casefold() == "absent":
                out.append(ParsedPoint(image, k, None, None, Status.ABSENT,
                                       where=f"{disp}: row {rn}"))
                continue
            try:
                x, y = _opt_float(xs, dc), _opt_float(ys, dc)
                if x is None or y is None:
                    raise ValueError
            except ValueError:
                faults.append(Fault(disp, f"row {rn} {names[k]}", (
                    f"({xs!r}, {ys!r}) is not a pair of numbers; skipped")))
                continue
            out.append(ParsedPoint(image, k, x, y, where=f"{disp}: row {rn}"))
    return out, faults, "wide"


def _parse_project_json(path: Path, names: Sequence[str]) -> tuple[list[ParsedPoint], list[Fault]]:
    disp = str(path)
    text, fault = _read_text(path, disp)
    if text is None:
        raise ImportFault(str(fault))
    d, problem = _load_json(text)
    if problem is not None:
        raise ImportFault(f"{disp}: {problem}")
    if not isinstance(d, dict) or d.get("format") != JSON_FORMAT or not isinstance(
            d.get("images"), list):
        raise ImportFault(f"{disp}: not an lmk_studio points JSON (format {JSON_FORMAT!r})")
    if isinstance(d.get("version"), int) and d["version"] > JSON_VERSION:
        raise ImportFault(f"{disp}: written by a newer lmk_studio (version "
                          f"{str(d['version'])[:20]})")
    t = d.get("template")
    lms = t.get("landmarks") if isinstance(t, dict) else None
    t_names = ([lm.get("name") if isinstance(lm, dict) else lm for lm in lms]
               if isinstance(lms, list) else None)
    if t_names is not None and [str(n) for n in t_names] != list(names):
        raise ImportFault(
            f"{disp}: its template ({len(t_names)} landmarks: {', '.join(map(str, t_names[:4]))}"
            f"...) differs from the project's ({len(names)}: {', '.join(names[:4])}...)")
    n_pts = sum(len(im["points"]) for im in d["images"]
                if isinstance(im, dict) and isinstance(im.get("points"), list))
    if n_pts > MAX_ANNOTATION_ITEMS:
        raise ImportFault(f"{disp}: {n_pts} points, more than the {MAX_ANNOTATION_ITEMS} one "
                          "file may hold (split it); nothing was imported")
    out: list[ParsedPoint] = []
    faults: list[Fault] = []
    for ii, im in enumerate(d["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("name"), str):
            faults.append(Fault(disp, f"image {ii + 1}", "no image name; skipped"))
            continue
        pts = im.get("points")
        if pts is None:
            continue
        if not isinstance(pts, list):
            faults.append(Fault(disp, im["name"], (
                f"'points' is {type(pts).__name__}, not a list; skipped")))
            continue
        for pj, pt in enumerate(pts):
            label = f"{im['name']} point {pj + 1}"
            if not isinstance(pt, dict):
                faults.append(Fault(disp, label, "not an object; skipped"))
                continue
            idx = pt.get("index")
            if isinstance(pt.get("name"), str):
                k = _label_index(pt["name"], names)
                idx = k if k is not None else idx
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(names):
                faults.append(Fault(disp, label, "unknown landmark; skipped"))
                continue
            label = f"{im['name']} {names[idx]}"
            try:
                status = Status(pt["status"]) if pt.get("status") else None
                source = Source(pt["source"]) if pt.get("source") else None
            except ValueError:
                faults.append(Fault(disp, label, "unknown status or source; skipped"))
                continue
            if status is Status.UNLABELLED:
                continue
            x, y = _finite(pt.get("x")), _finite(pt.get("y"))
            if status is not Status.ABSENT and (x is None or y is None):
                faults.append(Fault(disp, label, "no valid coordinates; skipped"))
                continue
            rid = pt.get("run_id")
            out.append(ParsedPoint(
                im["name"], idx, x if status is not Status.ABSENT else None,
                y if status is not Status.ABSENT else None, status, source,
                _finite(pt.get("confidence")), _finite(pt.get("expected_error_px")),
                rid if isinstance(rid, int) and not isinstance(rid, bool) else None,
                where=f"{disp}: {label}"))
    return out, faults


def read_points_table(path: str | Path, template: Any) -> tuple[dict[str, np.ndarray], list[Fault]]:
    """Placed points of a project CSV/JSON as {image name: (N, 2) with NaN} (for truth files).

    Duplicate rows for one image and landmark follow the duplicate rule.
    """
    p = Path(path)
    names = _names(template)
    if not p.is_file():
        raise LmkError(f"{p}: file not found")
    if p.suffix.lower() == ".json":
        pts, faults = _parse_project_json(p, names)
    else:
        pts, faults, _ = _parse_csv(p, names)
    cands: dict[str, dict[int, list[tuple[float, float, str]]]] = {}
    for q in pts:
        if q.x is None or q.y is None:
            continue
        cands.setdefault(q.image, {}).setdefault(q.index, []).append((q.x, q.y, names[q.index]))
    out: dict[str, np.ndarray] = {}
    for image, c in cands.items():
        good, f2 = _resolve_duplicates(c, f"{p}: {image}")
        faults += f2
        arr = np.full((len(names), 2), np.nan)
        for k, xy in good.items():
            arr[k] = xy
        out[image] = arr
    return out, faults


# ---- matching files to project images ------------------------------------------------------
class ImageIndex:
    """Project images by file name and by stem (case-insensitive), for matching imports."""

    def __init__(self, records: Iterable[Any]) -> None:
        self.by_name: dict[str, list[Any]] = {}
        self.by_stem: dict[str, list[Any]] = {}
        for r in records:
            self.by_name.setdefault(r.name.casefold(), []).append(r)
            self.by_stem.setdefault(Path(r.name).stem.casefold(), []).append(r)

    def find(self, *keys: str | None) -> tuple[Any | None, str | None]:
        """First key that names one image (file name, then stem); (record, None) or (None, why)."""
        why = None
        # as written first (a file name may really start with a space), then without the
        # spaces a spreadsheet or a hand edit may have added around it
        tried = [k for key in keys if key for k in dict.fromkeys((key, key.strip())) if k]
        for key in tried:
            # the whole key first: a shown name may hold a backslash ("caf\xe9.png" for a
            # byte that is not UTF-8); then its last path component (labelme's imagePath)
            base = key.replace("\\", "/").rsplit("/", 1)[-1]
            hits = None
            for k in dict.fromkeys((key.casefold(), base.casefold())):
                hits = self.by_name.get(k) or self.by_stem.get(k) or self.by_stem.get(
                    Path(k).stem.casefold())
                if hits:
                    break
            if hits and len(hits) == 1:
                return hits[0], None
            if hits:
                why = f"{key!r} matches {len(hits)} images ({', '.join(h.name for h in hits)})"
        return None, why


def _write_rows(
    project: Any, rows: list[tuple[int, LandmarkPoint]], report: ImportReport,
) -> ImportReport:
    """Validate the whole batch against the project, then one set_points transaction."""
    if not rows:
        detail = "\n".join(summarise_faults(report.faults))
        n_unk = len(report.unknown_images)
        unknown = (f"; {n_unk} unknown image(s): {', '.join(report.unknown_images[:10])}"
                   + (" ..." if n_unk > 10 else "") if n_unk else "")
        raise ImportFault(
            f"{report.source}: nothing to import ({report.files_read} file(s) read{unknown}); "
            f"nothing was written" + (f"\n{detail}" if detail else ""))
    ex_images = sorted({iid for iid, p in rows if p.status is Status.EXEMPLAR})
    if len(ex_images) > 1:
        raise ImportFault(
            f"{report.source}: exemplar points for {len(ex_images)} images; a project has one "
            "exemplar. Import them with another status. Nothing was written.")
    current_ex = getattr(project, "exemplar_id", None)
    if ex_images and current_ex is not None and current_ex != ex_images[0]:
        raise ImportFault(
            f"{report.source}: would make {project.image(ex_images[0]).name} the exemplar, but "
            f"the project's exemplar is {project.image(current_ex).name}. Import with another "
            "status or change the exemplar first. Nothing was written.")
    before = project.all_points()
    for iid, p in rows:
        old = before.get(iid)
        if old is not None and p.index < len(old) and old[p.index].placed:
            report.replaced += 1
            report.replaced_trusted += int(old[p.index].status.is_trusted)
    try:
        project.set_points(rows)
    except LmkError as e:
        raise ImportFault(f"{report.source}: {e}; nothing was written") from None
    except Exception as e:  # sqlite errors etc.: the store rolled the transaction back
        raise ImportFault(
            f"{report.source}: writing to the project failed ({type(e).__name__}: {e}); "
            "nothing was written") from None
    report.images_matched = len({iid for iid, _ in rows})
    report.imported = sum(1 for _, p in rows if p.status is not Status.ABSENT)
    report.absent = sum(1 for _, p in rows if p.status is Status.ABSENT)
    return report


def _source_files(source: Path, suffix: str, kind: str) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.exists():
        raise ImportFault(f"{source}: not found")
    if not source.is_dir():
        raise ImportFault(f"{source}: neither a file nor a folder")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() == suffix)
    if not files:
        raise ImportFault(f"{source}: no {suffix} files in this folder (expected {kind} files)")
    return files


def _add_unknown(report: ImportReport, disp: str, name: str, why: str | None) -> None:
    report.unknown_images.append(name)
    report.faults.append(Fault(disp, "-", why or f"no project image named {name!r}; skipped"))


def import_labelme(
    project: Any, source: str | Path, status: Status = Status.ACCEPTED,
    pixel_offset: float = LABELME_PIXEL_OFFSET,
) -> ImportReport:
    """labelme point files (a folder, non-recursive, or one file) -> project points.

    A file is matched to an image by the file name in its ``imagePath``, else by its own stem.
    """
    src = Path(source)
    files = _source_files(src, ".json", "labelme")
    base = src if src.is_dir() else src.parent
    status = Status(status)
    names = _names(project.template)
    index = ImageIndex(project.images())
    report = ImportReport(str(src), "labelme")
    rows: list[tuple[int, LandmarkPoint]] = []
    used: dict[int, str] = {}
    for p in files:
        disp = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
        report.files_read += 1
        probe = _parse_labelme(p, names, disp, None, pixel_offset)
        if not probe.readable:
            report.faults += probe.faults
            continue
        rec, why = index.find(probe.image_path, p.stem)
        if rec is None:
            _add_unknown(report, disp, Path(probe.image_path or p.stem).name, why)
            continue
        if rec.id in used:
            report.faults.append(Fault(disp, "-", (
                f"image {rec.name} already imported from {used[rec.id]}; skipped")))
            continue
        used[rec.id] = disp
        r = _parse_labelme(p, names, disp, (rec.width, rec.height), pixel_offset)
        report.faults += r.faults
        for k, (x, y) in sorted(r.points.items()):
            rows.append((rec.id, LandmarkPoint(k, x, y, status, Source.IMPORTED)))
    return _write_rows(project, rows, report)


def import_isbi(project: Any, source: str | Path, status: Status = Status.ACCEPTED) -> ImportReport:
    """ISBI 2015 text files (first N lines "x,y"), matched to images by file stem."""
    src = Path(source)
    files = _source_files(src, ".txt", "ISBI 2015 text")
    base = src if src.is_dir() else src.parent
    status = Status(status)
    n = len(project.template)
    index = ImageIndex(project.images())
    report = ImportReport(str(src), "ISBI")
    rows: list[tuple[int, LandmarkPoint]] = []
    for p in files:
        disp = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
        report.files_read += 1
        rec, why = index.find(p.stem)
        if rec is None:
            _add_unknown(report, disp, p.stem, why)
            continue
        pts, faults = read_isbi_points(p, n, display=disp, image_size=(rec.width, rec.height))
        report.faults += faults
        for k, (x, y) in sorted(pts.items()):
            rows.append((rec.id, LandmarkPoint(k, x, y, status, Source.IMPORTED)))
    return _write_rows(project, rows, report)


def _outside(q: ParsedPoint, rec: Any) -> str | None:
    """Why a parsed point cannot belong to its image, or None.

    The project's own CSV/JSON may hold model predictions a little outside the image (the
    store keeps them, and the round trip must be exact), so the bound is the image grown by
    its own width and height on every side; a coordinate beyond that (1e308, or -50 on a
    30-pixel image) is a damaged or hand-made file, and would break the COCO export's
    bounding box. labelme and ISBI files, written by annotators, are held to the image itself.
    """
    if q.x is None or q.y is None:
        return None
    w, h = getattr(rec, "width", None), getattr(rec, "height", None)
    if not isinstance(w, int) or not isinstance(h, int):
        return None
    if -0.5 - w <= q.x <= 2 * w - 0.5 and -0.5 - h <= q.y <= 2 * h - 0.5:
        return None
    return (f"point ({q.x:g}, {q.y:g}) lies far outside the {w}x{h} image (more than the "
            "image's own size beyond its edge); skipped")


def _import_parsed(
    project: Any, pts: list[ParsedPoint], report: ImportReport, status: Status | None,
) -> ImportReport:
    index = ImageIndex(project.images())
    run_ids = {r.id for r in project.runs()} if hasattr(project, "runs") else set()
    dropped_runs = 0
    by_key: dict[tuple[int, int], list[tuple[ParsedPoint, LandmarkPoint]]] = {}
    unknown_seen: set[str] = set()
    names = _names(project.template)
    for q in pts:
        rec, why = index.find(q.image)
        if rec is None:
            if q.image not in unknown_seen:
                unknown_seen.add(q.image)
                _add_unknown(report, report.source, q.image, why)
            continue
        outside = _outside(q, rec)
        if outside:
            report.faults.append(Fault(report.source, q.where.rsplit(": ", 1)[-1] + " "
                                       + names[q.index], outside))
            continue
        if status is None:
            st = q.status or Status.ACCEPTED
            src = q.source or Source.IMPORTED
            rid = q.run_id
            if rid is not None and rid not in run_ids:
                rid, dropped_runs = None, dropped_runs + 1
            lp = LandmarkPoint(q.index, q.x, q.y, st, src, q.confidence, q.expected_error_px, rid)
        else:
            st = Status(status)
            if q.status is Status.ABSENT:
                lp = LandmarkPoint(q.index, None, None, Status.ABSENT, Source.IMPORTED)
            else:
                lp = LandmarkPoint(q.index, q.x, q.y, st, Source.IMPORTED)
        by_key.setdefault((rec.id, q.index), []).append((q, lp))
    rows: list[tuple[int, LandmarkPoint]] = []
    for (iid, k), lst in by_key.items():
        if len(lst) > 1:
            rows_at = ", ".join(q.where.rsplit(": ", 1)[-1] for q, _ in lst[:5]) + (
                f" and {len(lst) - 5} more" if len(lst) > 5 else "")
            report.faults.append(Fault(report.source, f"{project.image(iid).name} {names[k]}", (
                f"{len(lst)} rows ({rows_at}) for the same point; ambiguous, none kept")))
            continue
        rows.append((iid, lst[0][1]))
    if dropped_runs:
        report.notes.append(
            f"{dropped_runs} point(s) name a model run this project does not have: run id dropped")
    report.files_read = 1
    return _write_rows(project, rows, report)


def import_csv(project: Any, source: str | Path, status: Status | None = None) -> ImportReport:
    """The project's CSV (long or wide layout) -> points.

    ``status`` None keeps each row's status/source/confidence (exact round trip; rows without a
    status become ACCEPTED); a Status overrides all rows (source IMPORTED, model data dropped).
    A ``.json`` file is read as the project's JSON export.
    """
    src = Path(source)
    if not src.is_file():
        raise ImportFault(f"{src}: file not found")
    if src.suffix.lower() == ".json":
        return import_json(project, src, status)
    names = _names(project.template)
    pts, faults, layout = _parse_csv(src, names)
    report = ImportReport(str(src), f"CSV ({layout})", faults=faults)
    return _import_parsed(project, pts, report, None if status is None else Status(status))


def import_json(project: Any, source: str | Path, status: Status | None = None) -> ImportReport:
    """The project's JSON export -> points (template must match; status as in import_csv)."""
    src = Path(source)
    if not src.is_file():
        raise ImportFault(f"{src}: file not found")
    pts, faults = _parse_project_json(src, _names(project.template))
    report = ImportReport(str(src), "JSON", faults=faults)
    return _import_parsed(project, pts, report, None if status is None else Status(status))


# ---- export --------------------------------------------------------------------------------
def _export_points(project: Any, reviewed_only: bool) -> list[tuple[Any, list[LandmarkPoint]]]:
    allp = project.all_points()
    out = []
    for rec in project.images():
        pts = [
            p for p in allp.get(rec.id, [])
            if p.status is not Status.UNLABELLED
            and (not reviewed_only or p.status.is_trusted)
            and (p.status is Status.ABSENT or p.placed)
        ]
        out.append((rec, pts))
    return out


def _num(v: float | int | None) -> float | int | str:
    """Numbers go out as numbers (never formula-escaped), None as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return ""
    return v


def _json_bytes(path: str | Path, doc: Any, indent: int | None = None) -> bytes:
    """Strict JSON (no NaN/Infinity, which other tools cannot read) as UTF-8 bytes; a value
    that cannot be written is an LmkError naming the export instead of a traceback."""
    try:
        text = json.dumps(doc, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise LmkError(f"{path}: cannot export: a value is out of range ({e}); the project "
                       "holds a coordinate or score that is not a finite number. Nothing was "
                       "written") from None
    return (text + "\n").encode("utf-8")


def _check_units(units: str, data: list, what: str) -> None:
    """units 'mm' needs a pixel spacing on every exported image: refuse before writing."""
    if units not in ("px", "mm"):
        raise LmkError(f"{what}: units must be px or mm, not {units!r}")
    if units == "mm":
        missing = [rec.name for rec, _ in data if not rec.spacing]
        if missing:
            raise LmkError(
                f"{what} in mm: {len(missing)} image(s) have no pixel spacing "
                f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); calibrate them "
                "or export in px. Nothing was written.")


def export_csv(
    project: Any, path: str | Path, wide: bool = False, reviewed_only: bool = False,
    units: str = "px",
) -> int:
    """Write the points as CSV (see ``render_csv``); returns rows written."""
    data, n = render_csv(project, path, wide, reviewed_only, units)
    atomic_write_bytes(path, data, "the CSV export")
    return n


def render_csv(
    project: Any, path: str | Path, wide: bool = False, reviewed_only: bool = False,
    units: str = "px",
) -> tuple[bytes, int]:
    """The CSV export as bytes (UTF-8 with BOM so spreadsheets detect it) and its row count;
    ``path`` only names the target in messages. Built apart from the write so that several
    exports can be written all or nothing (``fileio.atomic_write_many``).

    Long layout: one row per placed or absent point (``LONG_COLUMNS``; x_mm = x_px * column
    spacing, y_mm = y_px * row spacing, empty when the spacing is unknown). Wide layout: one row
    per image, ``<landmark>_x, <landmark>_y`` per landmark ("absent" for absent points), or
    ``<landmark>_x_mm, <landmark>_y_mm`` with units="mm". The long layout always carries both.
    """
    names = _names(project.template)
    data = _export_points(project, reviewed_only)
    _check_units(units, data, f"{path}: CSV export")
    mm = wide and units == "mm"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    n_rows = 0
    if not wide:
        w.writerow(LONG_COLUMNS)
        for rec, pts in data:
            sp = rec.spacing
            for p in pts:
                absent = p.status is Status.ABSENT
                x = None if absent else p.x
                y = None if absent else p.y
                w.writerow([
                    escape_cell(rec.name), p.index, escape_cell(names[p.index]),
                    _num(x), _num(y),
                    _num(x * sp[1] if sp and x is not None else None),
                    _num(y * sp[0] if sp and y is not None else None),
                    escape_cell(rec.spacing_source or "") if sp else "",
                    p.status.value, p.source.value if p.source else "",
                    _num(p.confidence), _num(p.expected_error_px), _num(p.run_id),
                ])
                n_rows += 1
    else:
        head = ["image"]
        for n in names:
            head += [escape_cell(f"{n}_x_mm" if mm else f"{n}_x"),
                     escape_cell(f"{n}_y_mm" if mm else f"{n}_y")]
        w.writerow(head)
        for rec, pts in data:
            cells: list[Any] = [""] * (2 * len(names))
            for p in pts:
                if p.status is Status.ABSENT:
                    cells[2 * p.index: 2 * p.index + 2] = ["absent", "absent"]
                else:
                    fx, fy = (rec.spacing[1], rec.spacing[0]) if mm else (1.0, 1.0)
                    cells[2 * p.index: 2 * p.index + 2] = [
                        _num(p.x * fx if p.x is not None else None),
                        _num(p.y * fy if p.y is not None else None)]
            w.writerow([escape_cell(rec.name), *cells])
            n_rows += 1
    return buf.getvalue().encode("utf-8-sig"), n_rows


def _point_dict(p: LandmarkPoint, name: str,
                spacing: tuple[float, float] | None = None) -> dict[str, Any]:
    absent = p.status is Status.ABSENT
    mm = {}
    if spacing and not absent and p.x is not None and p.y is not None:
        mm = {"x_mm": p.x * spacing[1], "y_mm": p.y * spacing[0]}
    return {
        "index": p.index, "name": name,
        "x": None if absent else p.x, "y": None if absent else p.y, **mm,
        "status": p.status.value, "source": p.source.value if p.source else None,
        "confidence": _finite(p.confidence), "expected_error_px": _finite(p.expected_error_px),
        "run_id": p.run_id,
    }


def export_json(project: Any, path: str | Path, reviewed_only: bool = False,
                units: str = "px") -> int:
    """Write the project-level JSON (see ``render_json``); returns points written."""
    data, n = render_json(project, path, reviewed_only, units)
    atomic_write_bytes(path, data, "the JSON export")
    return n


def render_json(project: Any, path: str | Path, reviewed_only: bool = False,
                units: str = "px") -> tuple[bytes, int]:
    """Project-level JSON (template, images with size/spacing, points); returns points written.

    Points carry x, y in px and, where the spacing is known, x_mm, y_mm; units="mm" only
    insists that every exported image has a spacing.
    """
    names = _names(project.template)
    images = []
    n = 0
    data = _export_points(project, reviewed_only)
    _check_units(units, data, f"{path}: JSON export")
    for rec, pts in data:
        images.append({
            "name": rec.name, "width": rec.width, "height": rec.height,
            "spacing": list(rec.spacing) if rec.spacing else None,
            "spacing_source": rec.spacing_source if rec.spacing else None,
            "exemplar": rec.id == getattr(project, "exemplar_id", None),
            "points": [_point_dict(p, names[p.index], rec.spacing) for p in pts],
        })
        n += len(pts)
    doc = {
        "format": JSON_FORMAT, "version": JSON_VERSION,
        "coordinates": "pixels; origin at the centre of the top-left pixel; spacing (row, col) mm/px",
        "template": project.template.to_dict() if hasattr(project.template, "to_dict")
        else {"name": "", "landmarks": [{"name": x} for x in names]},
        "images": images,
    }
    return _json_bytes(path, doc, indent=1), n


def export_coco(project: Any, path: str | Path, reviewed_only: bool = False,
                units: str = "px") -> int:
    """Write COCO keypoints (see ``render_coco``); returns placed keypoints written."""
    data, n = render_coco(project, path, reviewed_only, units)
    atomic_write_bytes(path, data, "the COCO export")
    return n


def render_coco(project: Any, path: str | Path, reviewed_only: bool = False,
                units: str = "px") -> tuple[bytes, int]:
    """COCO keypoints: one annotation per image, [x, y, v] with v=2 placed, 0 unlabelled/absent.

    ``scores`` per keypoint: the model confidence when known, 1.0 for human-placed points
    (exemplar/accepted/corrected), 0.0 otherwise. Keypoints are pixel indices (store
    convention). Returns the number of placed keypoints written.
    """
    if units != "px":
        raise LmkError(f"{path}: COCO keypoints are pixel coordinates by definition; export "
                       "COCO in px (CSV and JSON carry millimetres). Nothing was written.")
    names = _names(project.template)
    tname = getattr(project.template, "name", "landmarks")
    path = str(path)
    images, anns = [], []
    n = 0
    for rec, pts in _export_points(project, reviewed_only):
        images.append({"id": rec.id, "file_name": rec.name, "width": rec.width,
                       "height": rec.height})
        kp = [0.0] * (3 * len(names))
        scores = [0.0] * len(names)
        xs, ys = [], []
        for p in pts:
            if not p.placed:
                continue
            kp[3 * p.index: 3 * p.index + 3] = [p.x, p.y, 2]
            scores[p.index] = (float(p.confidence) if _finite(p.confidence) is not None
                               else (1.0 if p.status.is_trusted else 0.0))
            xs.append(p.x)
            ys.append(p.y)
        nk = len(xs)
        n += nk
        if nk:
            x0, y0 = min(xs), min(ys)
            bbox = [x0, y0, max(xs) - x0, max(ys) - y0]
        else:
            bbox = [0.0, 0.0, 0.0, 0.0]
        if not all(math.isfinite(v) for v in (*bbox, bbox[2] * bbox[3])):
            raise LmkError(
                f"{path}: cannot export COCO: image {rec.name} has points too far outside the "
                f"image (x from {min(xs):g} to {max(xs):g}, y from {min(ys):g} to {max(ys):g}) "
                "for a finite bounding box; correct them first. Nothing was written")
        anns.append({"id": len(anns) + 1, "image_id": rec.id, "category_id": 1,
                     "keypoints": kp, "num_keypoints": nk, "scores": scores, "bbox": bbox,
                     "area": bbox[2] * bbox[3], "iscrowd": 0})
    doc = {
        "info": {"description": f"lmk_studio export of {getattr(project, 'path', '')}",
                 "version": "1.0"},
        "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": tname, "supercategory": "landmarks",
                        "keypoints": names, "skeleton": []}],
    }
    return _json_bytes(path, doc), n
