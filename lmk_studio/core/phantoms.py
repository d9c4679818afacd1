"""Synthetic X-ray-like phantoms with exactly known landmarks (numpy + OpenCV only).

Why: the demo project, the GUI's first-run experience and every test that must prove an engine
learns need images whose true landmarks are known, that behave like radiographs (soft tissue,
bone with edges, corners and junctions, texture, vignetting, noise) and that defeat purely local
matching (a row of similar teeth, a column of similar vertebrae).

Geometry: one canonical scene (image 0, the exemplar) drawn in normalised coordinates; every
other image is the canonical one seen through a random global affine map composed with a smooth
elastic displacement field, then given its own gamma/contrast/offset, vignetting and noise.
Landmarks are polygon vertices and extreme points of curves of the canonical scene, carried
through the same deformation (the inverse of the backward sampling map is solved by fixed-point
iteration; measured residual < 1e-6 px), so they sit on the structure in every image.

Coordinates: float pixels, origin at the centre of the top-left pixel (as in core.points); the
point (x, y) means column x, row y. Everything is deterministic by seed; image k of a set does not
depend on how many images are requested.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from lmk_studio.core.errors import LmkError
from lmk_studio.core.fileio import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    from lmk_studio.core.templates import Template

TEMPLATE_NAME = "phantom-12"
DEMO_PROJECT_NAME = "demo.lmk"
_SHIFT = 4                      # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_BG = 0.06                      # air / collimator level

# (name, description, colour): the order is the landmark index.
_LANDMARKS: list[tuple[str, str, str]] = [
    ("sella", "floor of the cup-shaped depression on the cranial base", "#e6194b"),
    ("nasal tip", "anterior-inferior vertex of the nasal bone", "#3cb44b"),
    ("orbitale", "lowest point of the orbit ring's outer edge", "#ffe119"),
    ("basion", "posterior tip of the cranial base", "#4363d8"),
    ("condylion", "posterior-superior corner of the mandibular ramus", "#f58231"),
    ("gonion", "angle of the mandible (outer corner)", "#911eb4"),
    ("menton", "lowest anterior corner of the mandibular body", "#42d4f4"),
    ("pogonion", "most anterior corner of the chin", "#f032e6"),
    ("incisor tip", "cusp tip of the first (most anterior) tooth", "#bfef45"),
    ("molar tip", "cusp tip of the fifth tooth from the front", "#fabed4"),
    ("C2 corner", "anterior-inferior corner of the first vertebra", "#469990"),
    ("C3 corner", "anterior-inferior corner of the second vertebra", "#dcbeff"),
]

# Normalised (u = x / W, v = y / H) geometry of the canonical scene.
_CRANIAL_BASE = [(0.18, 0.50), (0.44, 0.445), (0.62, 0.50), (0.58, 0.535), (0.44, 0.50),
                 (0.22, 0.555)]
_SELLA = (0.44, 0.415, 0.045)              # cup: centre u, v and radius (fraction of W)
_NASAL = [(0.15, 0.33), (0.21, 0.35), (0.13, 0.53), (0.095, 0.52)]
_ORBIT = (0.29, 0.40, 0.075, 0.03)        # centre u, v, radius, thickness (fractions of W)
_MANDIBLE = [(0.665, 0.55), (0.745, 0.55), (0.77, 0.85), (0.27, 0.90), (0.205, 0.835),
             (0.30, 0.785), (0.665, 0.775)]
_TEETH_U0, _TEETH_W, _TEETH_GAP, _N_TEETH = 0.29, 0.042, 0.016, 6
_TEETH_TOP, _TEETH_SHOULDER, _TEETH_TIP = 0.64, 0.715, 0.758
_VERT_U, _VERT_W, _VERT_V0, _VERT_H, _VERT_STEP, _N_VERT = 0.81, 0.10, 0.46, 0.072, 0.098, 4
_SKULL = (0.50, 0.37, 0.37, 0.29, 0.042)  # centre u, v, semi-axes (u, v), thickness (of W)


@dataclass
class Phantom:
    """One synthetic image: float32 HxW in [0, 1] and its true landmarks (N, 2) as (x, y)."""

    image: np.ndarray
    points: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


_DIFFICULTY = {  # geometric scale, elastic scale, noise range, intensity scale
    "easy": (0.5, 0.5, (0.006, 0.012), 0.5),
    "normal": (1.0, 1.0, (0.010, 0.025), 1.0),
    "hard": (1.6, 1.6, (0.020, 0.045), 1.5),
}


def phantom_template() -> Template:
    """The 12-landmark template of the phantoms (names, descriptions, colours)."""
    from lmk_studio.core.templates import LandmarkDef, Template

    return Template(TEMPLATE_NAME, [LandmarkDef(n, d, c) for n, d, c in _LANDMARKS])


def landmark_names() -> list[str]:
    """Names in index order, without needing core.templates."""
    return [n for n, _, _ in _LANDMARKS]


# ---- canonical scene ---------------------------------------------------------------------------
def _px(uv: tuple[float, float], size: tuple[int, int]) -> tuple[float, float]:
    h, w = size
    return uv[0] * w - 0.5, uv[1] * h - 0.5


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32)


def _poly_mask(size: tuple[int, int], poly: list[tuple[float, float]]) -> np.ndarray:
    m = np.zeros(size, np.float32)
    pts = np.array([_px(p, size) for p in poly])
    cv2.fillPoly(m, [_fix(pts)], 1.0, cv2.LINE_AA, _SHIFT)
    return m


def _teeth_polys() -> list[list[tuple[float, float]]]:
    out = []
    for k in range(_N_TEETH):
        u0 = _TEETH_U0 + k * (_TEETH_W + _TEETH_GAP)
        u1 = u0 + _TEETH_W
        out.append([(u0, _TEETH_TOP), (u1, _TEETH_TOP), (u1, _TEETH_SHOULDER),
                    ((u0 + u1) / 2, _TEETH_TIP), (u0, _TEETH_SHOULDER)])
    return out


def _vert_polys() -> list[list[tuple[float, float]]]:
    out = []
    for k in range(_N_VERT):
        v0 = _VERT_V0 + k * _VERT_STEP
        # slightly trapezoidal bodies, anterior (left) side leaning like a cervical spine
        out.append([(_VERT_U + 0.008, v0), (_VERT_U + _VERT_W, v0 + 0.004),
                    (_VERT_U + _VERT_W, v0 + _VERT_H), (_VERT_U, v0 + _VERT_H + 0.006)])
    return out


def canonical_points(size: tuple[int, int]) -> np.ndarray:
    """True landmarks (N, 2) of the canonical scene drawn at size (H, W)."""
    h, w = size
    su, sv, sr = _SELLA
    cx, cy = _px((su, sv), size)
    ou, ov, orad, othick = _ORBIT
    ox, oy = _px((ou, ov), size)
    teeth = _teeth_polys()
    verts = _vert_polys()
    pts = [
        (cx, cy + sr * w),                                  # sella: bottom of the cup
        _px(_NASAL[3], size),                               # nasal tip
        (ox, oy + (orad + othick / 2) * w),                 # orbitale: outer edge, bottom
        _px(_CRANIAL_BASE[2], size),                        # basion
        _px(_MANDIBLE[1], size),                            # condylion
        _px(_MANDIBLE[2], size),                            # gonion
        _px(_MANDIBLE[3], size),                            # menton
        _px(_MANDIBLE[4], size),                            # pogonion
        _px(teeth[0][3], size),                             # incisor tip
        _px(teeth[4][3], size),                             # molar tip
        _px(verts[0][3], size),                             # C2 corner
        _px(verts[1][3], size),                             # C3 corner
    ]
    return np.array(pts, dtype=np.float64)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], sigma: float) -> np.ndarray:
    n = rng.standard_normal(size).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / max(float(n.std()), 1e-6)


def canonical_scene(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """The noise-free canonical image (float32 HxW, roughly [0, 1]) before acquisition effects."""
    h, w = size
    rng = np.random.default_rng([int(seed), 7919])
    tissue = np.zeros(size, np.float32)
    tc = _px((0.50, 0.55), size)
    cv2.ellipse(tissue, (_fix(tc)[0], _fix(tc)[1]), (int(0.44 * w * _ONE), int(0.43 * h * _ONE)),
                0, 0, 360, 1.0, -1, cv2.LINE_AA, _SHIFT)
    tissue = cv2.GaussianBlur(tissue, (0, 0), max(1.0, 0.02 * w))

    bone = np.zeros(size, np.float32)
    su, sv, sa, sb, st = _SKULL
    c = _fix(_px((su, sv), size))
    cv2.ellipse(bone, (c[0], c[1]), (int(sa * w * _ONE), int(sb * h * _ONE)), 0, 150, 390, 1.0,
                max(1, round(st * w)), cv2.LINE_AA, _SHIFT)
    for poly in (_CRANIAL_BASE, _NASAL, _MANDIBLE, *_vert_polys()):
        bone = np.maximum(bone, _poly_mask(size, poly))
    ou, ov, orad, othick = _ORBIT
    oc = _fix(_px((ou, ov), size))
    ring = np.zeros(size, np.float32)
    # cv2 draws a thick circle centred on the radius: outer edge at r + t/2
    cv2.circle(ring, (oc[0], oc[1]), int(orad * w * _ONE), 1.0, max(1, round(othick * w)),
               cv2.LINE_AA, _SHIFT)
    bone = np.maximum(bone, ring)
    cup = np.zeros(size, np.float32)
    scx = _fix(_px((_SELLA[0], _SELLA[1]), size))
    cv2.circle(cup, (scx[0], scx[1]), int(_SELLA[2] * w * _ONE), 1.0, -1, cv2.LINE_AA, _SHIFT)
    bone = bone * (1.0 - cup)

    teeth = np.zeros(size, np.float32)
    for poly in _teeth_polys():
        teeth = np.maximum(teeth, _poly_mask(size, poly))

    trabecular = 1.0 + 0.12 * _smooth_noise(rng, size, max(0.8, 0.012 * w))
    soft = 1.0 + 0.08 * _smooth_noise(rng, size, max(2.0, 0.06 * w))
    img = (_BG + 0.22 * tissue * soft + 0.34 * bone * trabecular
           + 0.50 * teeth * (1.0 + 0.05 * (trabecular - 1.0)))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), max(0.6, 0.006 * w))
    return img.astype(np.float32)


# ---- deformation -------------------------------------------------------------------------------
def _bilinear(f: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample HxW field f at float (x, y) (pixel centres at integers), clamped at the border."""
    h, w = f.shape
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    ax, ay = x - x0, y - y0
    return ((1 - ay) * ((1 - ax) * f[y0, x0] + ax * f[y0, x0 + 1])
            + ay * ((1 - ax) * f[y0 + 1, x0] + ax * f[y0 + 1, x0 + 1]))


def _random_affine(rng: np.random.Generator, size: tuple[int, int], g: float) -> np.ndarray:
    """3x3 canonical -> image affine about the image centre."""
    h, w = size
    ang = np.radians(rng.uniform(-6, 6) * g)
    s = np.exp(rng.uniform(-0.08, 0.08) * g)
    aniso = np.exp(rng.uniform(-0.03, 0.03) * g)
    shear = rng.uniform(-0.04, 0.04) * g
    t = rng.uniform(-0.045, 0.045, 2) * g * np.array([w, h])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lin = r @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([s * aniso, s / aniso])
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c - lin @ c + t
    return m


def _elastic(rng: np.random.Generator, size: tuple[int, int], g: float) -> tuple[np.ndarray, ...]:
    """Smooth displacement field (dx, dy) on the output grid: a 5x4 grid of N(0, 1) values times
    2 % of the short side * g, upsampled by cubic interpolation."""
    h, w = size
    amp = 0.02 * min(h, w) * g
    out = []
    for _ in range(2):
        coarse = rng.standard_normal((5, 4)).astype(np.float32)
        f = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        out.append((f * amp).astype(np.float32))
    return tuple(out)


def _warp(canon: np.ndarray, a: np.ndarray, dx: np.ndarray, dy: np.ndarray,
          pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image seen through y -> A^-1 y + D(y) (backward map); points solved by fixed point."""
    h, w = canon.shape
    inv = np.linalg.inv(a)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx = (inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2] + dx).astype(np.float32)
    my = (inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2] + dy).astype(np.float32)
    img = cv2.remap(canon, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # B(y) = A^-1 y + D(y) = p  <=>  y = A (p - D(y))
    q = pts @ a[:2, :2].T + a[:2, 2]
    for _ in range(60):
        d = np.stack([_bilinear(dx, q[:, 0], q[:, 1]), _bilinear(dy, q[:, 0], q[:, 1])], -1)
        new = (pts - d) @ a[:2, :2].T + a[:2, 2]
        if np.abs(new - q).max() < 1e-6:
            q = new
            break
        q = new
    return img, q


def _acquire(rng: np.random.Generator, img: np.ndarray, k: int, difficulty: str) -> tuple[
        np.ndarray, dict[str, float]]:
    """Exposure (gamma, contrast, offset), vignetting and noise: effects that do not move."""
    h, w = img.shape
    _, _, (n_lo, n_hi), ig = _DIFFICULTY[difficulty]
    if k == 0:
        gamma, contrast, offset, vig, noise = 1.0, 1.0, 0.0, 0.2, (n_lo + n_hi) / 2
        vc = np.array([0.0, 0.0])
    else:
        gamma = float(np.exp(rng.uniform(-0.25, 0.25) * ig))
        contrast = float(np.exp(rng.uniform(-0.15, 0.15) * ig))
        offset = float(rng.uniform(-0.04, 0.04) * ig)
        vig = float(rng.uniform(0.1, 0.3))
        noise = float(rng.uniform(n_lo, n_hi))
        vc = rng.uniform(-0.15, 0.15, 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx / max(w - 1, 1) - 0.5 - vc[0]) ** 2 + (yy / max(h - 1, 1) - 0.5 - vc[1]) ** 2) / 0.5
    out = np.clip(img, 0, 1) ** gamma
    out = (out - 0.5) * contrast + 0.5 + offset
    out = out * (1.0 - vig * r2)
    out = out + rng.normal(0, noise, img.shape).astype(np.float32)
    params = {"gamma": gamma, "contrast": contrast, "offset": offset, "vignetting": vig,
              "noise": noise}
    return np.clip(out, 0, 1).astype(np.float32), params


def make_phantom(k: int, size: tuple[int, int] = (160, 128), seed: int = 0,
                 difficulty: str = "normal", _canon: np.ndarray | None = None) -> Phantom:
    """Image k of the set `seed` (k = 0: the canonical exemplar, no deformation)."""
    if difficulty not in _DIFFICULTY:
        raise LmkError(f"phantoms: difficulty must be one of {sorted(_DIFFICULTY)}, "
                       f"not {difficulty!r}")
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise LmkError(f"phantoms: size {size} is too small (at least 32 x 32 pixels)")
    size = (h, w)
    canon = canonical_scene(size, seed) if _canon is None else _canon
    base = canonical_points(size)
    rng = np.random.default_rng([int(seed), int(k)])
    g, e, _, _ = _DIFFICULTY[difficulty]
    if k == 0:
        img, pts, geo = canon.copy(), base.copy(), {}
    else:
        margin = 2.0
        for attempt in range(20):
            shrink = 0.85 ** attempt      # keep every landmark inside the frame
            a = _random_affine(rng, size, g * shrink)
            dx, dy = _elastic(rng, size, e * shrink)
            img, pts = _warp(canon, a, dx, dy, base)
            inside = ((pts[:, 0] >= margin) & (pts[:, 0] <= w - 1 - margin)
                      & (pts[:, 1] >= margin) & (pts[:, 1] <= h - 1 - margin))
            if inside.all():
                break
        geo = {"affine": a[:2].tolist(), "elastic_px_max": float(np.hypot(dx, dy).max()),
               "attempts": attempt + 1}
    img, params = _acquire(rng, img, k, difficulty)
    return Phantom(img, pts, {"index": k, "seed": seed, "difficulty": difficulty, **geo, **params})


def make_phantom_set(n: int, size: tuple[int, int] = (160, 128), seed: int = 0,
                     difficulty: str = "normal") -> list[Phantom]:
    """n phantoms of one scene; image 0 is the canonical one (the exemplar)."""
    if n < 1:
        raise LmkError(f"phantoms: need at least one image, not {n}")
    h, w = int(size[0]), int(size[1])
    canon = canonical_scene((h, w), seed) if h >= 32 and w >= 32 else None
    return [make_phantom(k, (h, w), seed, difficulty, canon) for k in range(n)]


# ---- demo project ------------------------------------------------------------------------------
def _png_bytes(img: np.ndarray, path: Path) -> bytes:
    u8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", u8)   # imencode + write: unicode-safe on every platform
    if not ok:
        raise LmkError(f"{path}: PNG encoding failed")
    return buf.tobytes()


def truth_csv_text(names: list[str], points: list[np.ndarray]) -> str:
    """True points in the project CSV long format (image, landmark_index, landmark_name, x_px,
    y_px), the columns core.formats reads back."""
    lm = landmark_names()
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(["image", "landmark_index", "landmark_name", "x_px", "y_px"])
    for name, pts in zip(names, points, strict=True):
        for j, (x, y) in enumerate(pts):
            wr.writerow([name, j, lm[j], f"{x:.4f}", f"{y:.4f}"])
    return out.getvalue()


def write_demo_project(dir: str | Path, n: int = 24, size: tuple[int, int] = (320, 256),
                       seed: int = 0) -> Path:
    """Write a ready-to-use phantom project into `dir` and return the .lmk file.

    dir/images/phantom_NNN.png (8-bit), dir/demo.lmk with image 0 annotated as the EXEMPLAR
    (its true points), dir/truth.csv with the true points of every image (for `evaluate`).
    Refuses to touch an existing project or images folder so nothing of the user's is lost.
    """
    from lmk_studio.core.points import LandmarkPoint, Source, Status
    from lmk_studio.core.store import Project

    if n < 2:
        raise LmkError(f"demo: need at least 2 images (an exemplar and one to predict), not {n}")
    root = Path(dir)
    lmk = root / DEMO_PROJECT_NAME
    images = root / "images"
    truth = root / "truth.csv"
    if lmk.exists():
        raise LmkError(f"{lmk}: a project already exists there; choose an empty folder")
    if truth.exists():
        raise LmkError(f"{truth}: already exists; choose an empty folder for the demo")
    if images.exists() and any(images.iterdir()):
        raise LmkError(f"{images}: folder is not empty; choose an empty folder for the demo")
    try:
        images.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LmkError(f"{images}: cannot create the folder ({exc.strerror or exc})") from exc
    phs = make_phantom_set(n, size=size, seed=seed)
    names = [f"phantom_{k:03d}.png" for k in range(n)]
    written: list[Path] = []
    try:
        for name, ph in zip(names, phs, strict=True):
            p = images / name
            atomic_write_bytes(p, _png_bytes(ph.image, p))
            written.append(p)
        atomic_write_bytes(truth, truth_csv_text(names, [ph.points for ph in phs]).encode("utf-8"))
        written.append(truth)
        written.append(lmk)     # from here on the project file is ours too
        with Project.create(lmk, phantom_template(), images_dir=images) as proj:
            recs = {r.name: r for r in proj.images()}
            if names[0] not in recs:
                faults = "; ".join(f"{a}: {b}" for a, b in getattr(proj, "last_faults", []))
                raise LmkError(f"{lmk}: the exemplar image was not added ({faults or 'unknown'})")
            ex = recs[names[0]]
            proj.set_points([(ex.id, LandmarkPoint(j, float(x), float(y), Status.EXEMPLAR,
                                                   Source.MANUAL))
                             for j, (x, y) in enumerate(phs[0].points)])
            if proj.exemplar_id != ex.id:
                proj.set_exemplar(ex.id)
            proj.set_meta("demo", {"seed": seed, "n": n, "size": list(size),
                                   "truth_csv": "truth.csv",
                                   "generator": "lmk_studio.core.phantoms"})
    except BaseException:
        # leave no half demo behind (only files this call created; nothing of the user's)
        for f in [*written, Path(str(lmk) + "-wal"), Path(str(lmk) + "-shm")]:
            try:
                f.unlink()
            except OSError:
                pass
        raise
    return lmk
