"""Synthetic phantoms: deterministic, landmarks on real structure and carried exactly through the
deformation, repeated look-alike structures, and the demo project / `lmk-studio demo`."""

from __future__ import annotations

import argparse
import csv

import cv2
import numpy as np
import pytest

from lmk_studio.core import phantoms
from lmk_studio.core.errors import LmkError
from lmk_studio.core.phantoms import make_phantom_set


def _grad(img: np.ndarray) -> np.ndarray:
    im = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.hypot(cv2.Sobel(im, cv2.CV_32F, 1, 0), cv2.Sobel(im, cv2.CV_32F, 0, 1))


def test_deterministic_by_seed_and_independent_of_set_size() -> None:
    a = make_phantom_set(4, seed=3)
    b = make_phantom_set(6, seed=3)
    c = make_phantom_set(4, seed=4)
    for pa, pb in zip(a, b[:4], strict=True):
        np.testing.assert_array_equal(pa.image, pb.image)
        np.testing.assert_array_equal(pa.points, pb.points)
    assert not np.array_equal(a[1].image, c[1].image)
    assert not np.allclose(a[1].points, c[1].points)


def test_images_and_points_are_well_formed() -> None:
    for size in ((160, 128), (96, 80)):
        for ph in make_phantom_set(5, size=size, seed=0):
            assert ph.image.dtype == np.float32 and ph.image.shape == size
            assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
            assert ph.image.std() > 0.05                    # not a flat picture
            assert ph.points.shape == (len(phantoms.landmark_names()), 2)
            h, w = size
            assert np.all((ph.points >= 0) & (ph.points <= [w - 1, h - 1]))


def test_landmarks_sit_on_edges() -> None:
    """Gradient magnitude at every landmark is well above the image median (measured min ratio
    2.59 over seeds 0-2, 8 images each, normal difficulty at 160x128; asserted > 1.5)."""
    for seed in range(3):
        for ph in make_phantom_set(8, seed=seed):
            g = _grad(ph.image)
            med = float(np.median(g))
            xy = np.round(ph.points).astype(int)
            at = np.array([g[y - 1:y + 2, x - 1:x + 2].max() for x, y in xy])
            assert np.all(at > 1.5 * med), (seed, ph.params.get("index"), at / med)


def test_deformations_move_points_and_grow_with_difficulty() -> None:
    means = {}
    for diff in ("easy", "normal", "hard"):
        phs = make_phantom_set(8, seed=1, difficulty=diff)
        d = np.array([np.linalg.norm(p.points - phs[0].points, axis=1) for p in phs[1:]])
        assert np.all(d.mean(axis=1) > 1.0)            # every image really moved
        # not one rigid shift: the per-landmark displacements differ within an image
        assert np.all(d.std(axis=1) > 0.3)
        means[diff] = d.mean()
    assert means["easy"] < means["normal"] < means["hard"]
    with pytest.raises(LmkError):
        make_phantom_set(2, difficulty="extreme")


def test_points_are_transported_exactly_with_the_image() -> None:
    """A scene of small bright dots at the landmarks, warped by the same machinery: the warped
    dots' intensity centroids land on the transported points (sub-pixel)."""
    size = (160, 128)
    base = phantoms.canonical_points(size)
    yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    dots = np.zeros(size, np.float32)
    for x, y in base:
        dots += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2 ** 2))
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = phantoms._random_affine(rng, size, 1.0)
        dx, dy = phantoms._elastic(rng, size, 1.0)
        img, pts = phantoms._warp(dots, a, dx, dy, base)
        assert np.linalg.norm(pts - base, axis=1).mean() > 2.0
        for x, y in pts:
            x0, y0 = int(round(x)), int(round(y))
            win = img[y0 - 4:y0 + 5, x0 - 4:x0 + 5]
            gy, gx = np.mgrid[y0 - 4:y0 + 5, x0 - 4:x0 + 5]
            c = np.array([(win * gx).sum(), (win * gy).sum()]) / win.sum()
            assert np.hypot(*(c - (x, y))) < 0.35, (c, (x, y))


def test_repeated_structures_defeat_purely_local_matching() -> None:
    """The incisor tip's neighbourhood looks like its neighbours' (a row of similar teeth), so a
    local matcher searching a few teeth wide has several near-equal candidates."""
    ph = make_phantom_set(1, size=(320, 256), seed=0)[0]
    img = cv2.GaussianBlur(ph.image, (0, 0), 1.0)
    x, y = np.round(ph.points[phantoms.landmark_names().index("incisor tip")]).astype(int)
    r = 8
    tpl = img[y - r:y + r + 1, x - r:x + r + 1]
    strip = img[y - r:y + r + 1, x - r:x + r + 80]
    ncc = cv2.matchTemplate(strip, tpl, cv2.TM_CCOEFF_NORMED)[0]
    peaks = [i for i in range(1, len(ncc) - 1)
             if ncc[i] >= ncc[i - 1] and ncc[i] >= ncc[i + 1] and ncc[i] > 0.8]
    assert len(peaks) >= 3, ncc.round(2)     # measured: 5 peaks (NCC 0.96 ... 0.86), ~15 px apart


def test_phantom_template() -> None:
    pytest.importorskip("lmk_studio.core.templates")
    t = phantoms.phantom_template()
    t.validate()
    assert len(t) == 12 and t.names == phantoms.landmark_names()
    assert len({lm.color for lm in t}) == len(t)


def test_demo_project_opens_with_the_exemplar_annotated(tmp_path) -> None:
    store = pytest.importorskip("lmk_studio.core.store")
    pytest.importorskip("lmk_studio.core.images")
    pytest.importorskip("lmk_studio.core.templates")
    from lmk_studio.core.points import Status

    root = tmp_path / "démo ü 例"
    lmk = phantoms.write_demo_project(root, n=4, size=(160, 128), seed=5)
    truth = make_phantom_set(4, size=(160, 128), seed=5)
    assert lmk == root / "demo.lmk" and lmk.exists()
    with store.Project.open(lmk) as p:
        recs = p.images()
        assert [r.name for r in recs] == [f"phantom_{k:03d}.png" for k in range(4)]
        assert p.exemplar_id == recs[0].id
        pts = p.points(recs[0].id)
        assert all(q.status is Status.EXEMPLAR for q in pts)
        np.testing.assert_allclose([(q.x, q.y) for q in pts], truth[0].points, atol=1e-6)
        assert all(not q.placed for q in p.points(recs[1].id))
    with open(root / "truth.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 12
    r = [q for q in rows if q["image"] == "phantom_002.png" and q["landmark_index"] == "3"][0]
    assert r["landmark_name"] == "basion"
    assert abs(float(r["x_px"]) - truth[2].points[3, 0]) < 1e-3
    assert abs(float(r["y_px"]) - truth[2].points[3, 1]) < 1e-3
    before = lmk.read_bytes()
    with pytest.raises(LmkError, match="already exists"):
        phantoms.write_demo_project(root, n=4, size=(160, 128))
    assert lmk.read_bytes() == before


def test_demo_refuses_a_folder_with_images_and_bad_counts(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "mine.png").write_bytes(b"user data")
    with pytest.raises(LmkError, match="not empty"):
        phantoms.write_demo_project(tmp_path, n=3)
    assert (tmp_path / "images" / "mine.png").read_bytes() == b"user data"
    with pytest.raises(LmkError, match="at least 2"):
        phantoms.write_demo_project(tmp_path / "x", n=1)


def test_cmd_demo_writes_and_prints_how_to_open(tmp_path, capsys) -> None:
    """The `lmk-studio demo` handler (called as cli.main dispatches it)."""
    pytest.importorskip("lmk_studio.core.store")
    pytest.importorskip("lmk_studio.core.images")
    pytest.importorskip("lmk_studio.core.templates")
    from lmk_studio import commands

    assert commands.cmd_demo(argparse.Namespace(dir=str(tmp_path / "d"), n=3)) == 0
    out = capsys.readouterr().out
    assert "lmk-studio" in out and str(tmp_path / "d" / "demo.lmk") in out
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 3
    with pytest.raises(LmkError, match="already exists"):      # never overwrites
        commands.cmd_demo(argparse.Namespace(dir=str(tmp_path / "d"), n=3))
    with pytest.raises(LmkError, match="--n"):
        commands.cmd_demo(argparse.Namespace(dir=str(tmp_path / "e"), n=1))


def test_failed_demo_leaves_nothing_half_written(tmp_path, monkeypatch) -> None:
    store = pytest.importorskip("lmk_studio.core.store")
    pytest.importorskip("lmk_studio.core.images")
    pytest.importorskip("lmk_studio.core.templates")

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.Project, "create", boom)
    with pytest.raises(OSError):
        phantoms.write_demo_project(tmp_path / "d", n=3, size=(96, 80))
    assert not list((tmp_path / "d").rglob("*.*"))          # no PNG, CSV or project left
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "truth.csv").write_text("mine", encoding="utf-8")
    with pytest.raises(LmkError, match="truth.csv"):
        phantoms.write_demo_project(tmp_path / "t", n=3)
    assert (tmp_path / "t" / "truth.csv").read_text(encoding="utf-8") == "mine"
