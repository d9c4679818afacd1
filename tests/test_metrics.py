"""Metric values against hand-computed cases (3-4-5 triangles, known SDR shares, NaN handling)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmk_studio.core.metrics import evaluate_points, radial_errors


def _truth(m: int, n: int) -> np.ndarray:
    return np.arange(m * n * 2, dtype=float).reshape(m, n, 2) * 10.0


def test_radial_errors_345_and_nan():
    t = _truth(2, 3)
    p = t.copy()
    p[0, 0] += (3.0, 4.0)  # 5
    p[1, 2] += (-6.0, 8.0)  # 10
    p[1, 1] = np.nan
    e = radial_errors(p, t)
    assert e.shape == (2, 3)
    assert e[0, 0] == 5.0 and e[1, 2] == 10.0 and e[0, 1] == 0.0
    assert math.isnan(e[1, 1])


def test_radial_errors_shape_mismatch():
    with pytest.raises(ValueError, match="must both be"):
        radial_errors(np.zeros((2, 3, 2)), np.zeros((2, 4, 2)))


def test_mre_sd_sdr_px_by_hand():
    # 1 image, 4 landmarks, errors 0, 5, 10, 15 px (3-4-5 multiples); no spacing -> px
    t = np.zeros((1, 4, 2))
    p = np.array([[[0, 0], [3, 4], [6, 8], [9, 12]]], dtype=float)
    r = evaluate_points(p, t, None, thresholds_mm=(5, 10), names=["a", "b", "c", "d"])
    assert r.unit == "px"
    assert r.mre == pytest.approx(7.5)
    # population SD of 0,5,10,15 = sqrt(mean((-7.5,-2.5,2.5,7.5)^2)) = sqrt(31.25)
    assert r.sd == pytest.approx(math.sqrt(31.25))
    assert r.median == pytest.approx(7.5)
    assert r.sdr == {5.0: pytest.approx(50.0), 10.0: pytest.approx(75.0)}  # <= is inclusive
    assert r.mre_px == pytest.approx(7.5)
    assert [s.mre for s in r.per_landmark] == [0.0, 5.0, 10.0, 15.0]
    assert r.per_landmark[1].name == "b" and r.per_landmark[3].max == 15.0
    assert r.n_evaluated == 4 and r.n_missing_pred == 0 and r.n_missing_truth == 0


def test_mm_scalar_spacing_and_thresholds():
    # errors 5 px and 10 px at 0.1 mm/px -> 0.5 mm, 1.0 mm
    t = np.zeros((2, 1, 2))
    p = np.array([[[3, 4]], [[6, 8]]], dtype=float)
    r = evaluate_points(p, t, 0.1, thresholds_mm=(0.5, 0.75, 2))
    assert r.unit == "mm"
    assert r.mre == pytest.approx(0.75)
    assert r.sd == pytest.approx(0.25)
    assert r.mre_px == pytest.approx(7.5) and r.sd_px == pytest.approx(2.5)
    assert r.sdr[0.5] == pytest.approx(50.0)
    assert r.sdr[0.75] == pytest.approx(50.0)
    assert r.sdr[2.0] == pytest.approx(100.0)
    assert r.per_image_mre == [pytest.approx(0.5), pytest.approx(1.0)]


def test_anisotropic_and_per_image_spacing():
    t = np.zeros((2, 1, 2))
    p = np.array([[[3, 4]], [[3, 4]]], dtype=float)  # dx = 3 px, dy = 4 px
    # image 0: row 0.2 mm (dy), col 0.1 mm (dx) -> sqrt(0.3^2 + 0.8^2); image 1 isotropic 1 mm
    sp = np.array([[0.2, 0.1], [1.0, 1.0]])
    r = evaluate_points(p, t, sp)
    assert r.errors[0, 0] == pytest.approx(math.hypot(0.3, 0.8))
    assert r.errors[1, 0] == pytest.approx(5.0)
    r2 = evaluate_points(p, t, np.array([0.5, 2.0]))  # (M,) per-image isotropic
    assert r2.errors[:, 0] == pytest.approx([2.5, 10.0])


def test_missing_spacing_falls_back_to_px_with_note():
    t = np.zeros((2, 1, 2))
    p = np.array([[[3, 4]], [[6, 8]]], dtype=float)
    r = evaluate_points(p, t, np.array([0.1, np.nan]))
    assert r.unit == "px" and r.mre == pytest.approx(7.5)
    assert any("spacing unknown for 1" in n for n in r.notes)


def test_nan_counted_not_averaged():
    t = np.zeros((2, 3, 2))
    p = np.zeros((2, 3, 2))
    p[0, 0] = (3, 4)  # 5
    p[0, 1] = np.nan  # missing prediction
    t[1, 2] = np.nan  # missing truth (e.g. a faulty doctor file)
    p[1, 2] = (100, 100)  # ignored: no truth
    r = evaluate_points(p, t, None, thresholds_mm=(1,))
    assert r.n_evaluated == 4
    assert r.n_missing_pred == 1
    assert r.n_missing_truth == 1
    assert r.mre == pytest.approx(5 / 4)
    assert r.sdr[1.0] == pytest.approx(75.0)
    assert r.per_landmark[1].n == 1 and r.per_landmark[1].n_missing_pred == 1
    assert r.per_landmark[2].n == 1
    assert any("no prediction" in n for n in r.notes)


def test_all_missing_landmark_is_nan_and_json_null():
    t = np.zeros((1, 2, 2))
    p = np.zeros((1, 2, 2))
    p[0, 1] = np.nan
    r = evaluate_points(p, t, 0.5, names=["S", "N"], image_names=["001.png"])
    assert math.isnan(r.per_landmark[1].mre)
    d = r.to_dict()
    json.dumps(d, allow_nan=False)  # strict JSON: NaN became null
    assert d["per_landmark"][1]["mre"] is None
    assert d["unit"] == "mm" and d["sdr"] == {"2.0": 100.0, "2.5": 100.0, "3.0": 100.0, "4.0": 100.0}
    assert d["per_image"] == [{"image": "001.png", "mre": 0.0}]


def test_format_table_has_every_landmark_and_unit():
    t = np.zeros((1, 2, 2))
    p = np.array([[[3, 4], [0, 0]]], dtype=float)
    r = evaluate_points(p, t, 0.125, names=["Sella", "Nasion"])
    txt = r.format_table()
    assert "MRE: 0.31 ± 0.31 mm" in txt  # 5 px * 0.125 = 0.625 mm and 0 -> 0.3125 ± 0.3125
    assert "[2.50 ± 2.50 px]" in txt
    assert "Sella" in txt and "Nasion" in txt
    lines = [ln for ln in txt.splitlines() if ln.strip().startswith(("1 ", "2 "))]
    assert len(lines) == 2 and "0.62" in lines[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_points(np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), None, thresholds_mm=(0,))
    with pytest.raises(ValueError, match="names"):
        evaluate_points(np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), None, names=["a", "b"])
    with pytest.raises(ValueError, match="spacing"):
        evaluate_points(np.zeros((3, 1, 2)), np.zeros((3, 1, 2)), np.ones((3, 3)))
