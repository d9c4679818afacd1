"""Import/export formats: labelme faults, ISBI text, project CSV/JSON round trips, COCO, escaping,
atomic writes, all-or-nothing imports."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lmk_studio.core import formats
from lmk_studio.core.errors import ImportFault, LmkError
from lmk_studio.core.formats import (
    Fault,
    escape_cell,
    read_isbi_points,
    read_labelme_points,
    unescape_cell,
)
from lmk_studio.core.points import LandmarkPoint, Source, Status

NAMES = ["Sella", "Nasion", "-Menton", "=Gonion"]  # formula-like names on purpose


# ---- helpers -------------------------------------------------------------------------------
def _labelme(path: Path, shapes: list, w: int = 64, h: int = 48, image: str | None = None) -> Path:
    d = {"version": "5.0.1", "flags": {}, "shapes": shapes, "imagePath": image or
         f"{path.stem}.png", "imageData": None, "imageHeight": h, "imageWidth": w}
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


def _pt(label: str, x: float, y: float, kind: str = "point") -> dict:
    return {"label": label, "points": [[x, y]], "group_id": None, "shape_type": kind,
            "flags": {}}


def _pairs(faults: list[Fault]) -> set[tuple[str, str]]:
    return {(f.file, f.label) for f in faults}


# ---- escaping ------------------------------------------------------------------------------
@pytest.mark.parametrize("s", ["=1+1", "+A1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "''",
                               "plain", "", "'plain", "é=ü", "a-b"])
def test_escape_round_trip(s):
    e = escape_cell(s)
    assert unescape_cell(e) == s
    assert not e.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_escape_only_dangerous_starts():
    assert escape_cell("=HYPERLINK()") == "'=HYPERLINK()"
    assert escape_cell("a=b") == "a=b"
    assert unescape_cell("'abc") == "'abc"  # a plain apostrophe is left alone


# ---- labelme -------------------------------------------------------------------------------
def test_labelme_sound_file_and_pixel_offset(tmp_path):
    p = _labelme(tmp_path / "a.json", [_pt("l1", 10.5, 20.5), _pt("Nasion", 3, 4),
                                       _pt("l3", 0, 0), _pt("L4", 64, 48)])
    pts, faults = read_labelme_points(p, NAMES)
    assert faults == []
    # labelme's pixel-corner origin -> the store's pixel-centre origin
    assert pts == {0: (10.0, 20.0), 1: (2.5, 3.5), 2: (-0.5, -0.5), 3: (63.5, 47.5)}
    pts0, _ = read_labelme_points(p, NAMES, pixel_offset=0.0)
    assert pts0[0] == (10.5, 20.5)
    # a landmark literally named like "l3" wins over the positional l<k> reading
    q = _labelme(tmp_path / "b.json", [_pt("l3", 1.5, 1.5)])
    pts, faults = read_labelme_points(q, ["l3", "b", "c"])
    assert pts == {0: (1.0, 1.0)} and {f.label for f in faults} == {"b", "c"}


def test_labelme_every_fault_reported_sound_points_kept(tmp_path):
    p = _labelme(tmp_path / "f.json", [
        _pt("l1", 10, 10), _pt("l1", 30, 30),  # duplicate far apart -> none kept
        _pt("l2", 5, 5), _pt("l2", 5.6, 5.8),  # duplicate within 1 px -> mean kept
        _pt("l9", 1, 1),  # unknown label (4 landmarks)
        {"label": "l3", "points": [[1, 1], [2, 2]], "shape_type": "line"},  # non-point
        _pt("xx", 1, 1),  # unknown label
        {"label": "l4", "points": [["a", 2]], "shape_type": "point"},  # malformed
    ])
    pts, faults = read_labelme_points(p, NAMES, display="f.json")
    assert pts == {1: pytest.approx((4.8, 4.9))}
    by = {f.label: f.problem for f in faults}
    assert set(by) == {"l1", "l2", "l9", "l3", "xx", "l4"}
    assert "ambiguous, none kept" in by["l1"] and "28.3 px apart" in by["l1"]
    assert "mean is kept" in by["l2"]
    assert "unknown label" in by["l9"] and "unknown label" in by["xx"]
    assert "'line' shape" in by["l3"]
    assert "not numbers" in by["l4"]
    assert all(str(f).startswith("f.json: ") for f in faults)


def test_labelme_missing_and_mislabelled_point(tmp_path):
    # l3 labelled "l2": shows up as a duplicate l2 and a missing l3, both reported
    p = _labelme(tmp_path / "002.json", [_pt("l1", 1, 1), _pt("l2", 10, 10), _pt("l2", 40, 40),
                                         _pt("l4", 7, 7)])
    pts, faults = read_labelme_points(p, NAMES, display="002.json")
    assert set(pts) == {0, 3}
    assert _pairs(faults) == {("002.json", "l2"), ("002.json", "l3")}
    miss = next(f for f in faults if f.label == "l3")
    assert miss.problem.startswith("missing label") and "l2 is duplicated" in miss.problem


def test_labelme_bad_json_and_not_labelme(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"shapes": [', encoding="utf-8")
    pts, faults = read_labelme_points(bad, NAMES, display="bad.json")
    assert pts == {} and len(faults) == 1 and "not valid JSON (line 1" in faults[0]
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}', encoding="utf-8")
    _, faults = read_labelme_points(other, NAMES)
    assert "no 'shapes' list" in faults[0]
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    _, faults = read_labelme_points(binary, NAMES)
    assert "not UTF-8" in faults[0]


def test_labelme_size_mismatch_and_outside(tmp_path):
    p = _labelme(tmp_path / "s.json", [_pt("l1", 1, 1)], w=128, h=96)
    pts, faults = read_labelme_points(p, NAMES, image_size=(64, 48))
    assert pts == {} and "states a 128x96 image but the image is 64x48" in faults[0]
    p2 = _labelme(tmp_path / "o.json", [_pt("l1", 70, 1), _pt("l2", 2, 2)], w=64, h=48)
    pts, faults = read_labelme_points(p2, NAMES)
    assert set(pts) == {1}
    assert any(f.label == "l1" and "outside the 64x48 image" in f.problem for f in faults)


# ---- ISBI ----------------------------------------------------------------------------------
def test_isbi_extra_lines_ignored_short_and_bad_lines(tmp_path):
    p = tmp_path / "001.txt"
    p.write_text("835,996\n1473,1029\n 7 , 8 \nA\n2\n3\n", encoding="utf-8")  # lines 4+: extra
    pts, faults = read_isbi_points(p, 3)
    assert pts == {0: (835.0, 996.0), 1: (1473.0, 1029.0), 2: (7.0, 8.0)} and faults == []
    q = tmp_path / "002.txt"
    q.write_text("1,2\nx,y\n", encoding="utf-8")
    pts, faults = read_isbi_points(q, 4, display="002.txt")
    assert pts == {0: (1.0, 2.0)}
    assert _pairs(faults) == {("002.txt", "l2"), ("002.txt", "l3"), ("002.txt", "l4")}
    assert "only 2 line(s)" in next(f for f in faults if f.label == "l4").problem


# ---- atomic writes -------------------------------------------------------------------------
def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.csv"
    target.write_text("old content\n", encoding="utf-8")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(LmkError) as ei:
        formats.atomic_write_text(target, "new content that does not fit\n")
    assert str(target) in str(ei.value) and "No space left" in str(ei.value)
    assert target.read_text(encoding="utf-8") == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temp file left


def test_atomic_write_missing_folder(tmp_path):
    with pytest.raises(LmkError, match="does not exist"):
        formats.atomic_write_text(tmp_path / "nope" / "x.csv", "x")


# ---- with a real project store -------------------------------------------------------------
@pytest.fixture
def store():
    return pytest.importorskip("lmk_studio.core.store")


def _images(folder: Path, names: list[str], w: int = 64, h: int = 48) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        ok, buf = cv2.imencode(".png", rng.integers(0, 255, (h, w), dtype=np.uint8))
        assert ok
        (folder / n).write_bytes(buf.tobytes())
    return folder


IMG_NAMES = ["001.png", "ünï cödé.png", "=cmd.png", "004.png"]


def _template():
    from lmk_studio.core.templates import LandmarkDef, Template

    return Template("t4", [LandmarkDef(n) for n in NAMES])


def _project(store, tmp_path: Path, name: str = "p.lmk"):
    imgs = _images(tmp_path / "images", IMG_NAMES)
    proj = store.Project.create(tmp_path / name, _template(), images_dir=imgs)
    assert len(proj.images()) == len(IMG_NAMES), proj.last_faults
    return proj


def _fill(proj) -> dict[str, list[LandmarkPoint]]:
    """Points of every kind: exemplar, predicted with model data, negative, absent, unlabelled."""
    recs = {r.name: r for r in proj.images()}
    run = proj.start_run("stage2", {"preset": "quick"})
    proj.finish_run(run, "finished")
    rows = [
        (recs["001.png"].id, LandmarkPoint(0, 10.25, 20.5, Status.EXEMPLAR, Source.MANUAL)),
        (recs["001.png"].id, LandmarkPoint(1, 0.1 + 0.2, 1 / 3, Status.EXEMPLAR, Source.MANUAL)),
        (recs["ünï cödé.png"].id, LandmarkPoint(0, -3.5, -0.25, Status.PREDICTED, Source.STAGE2,
                                                0.8123456789012345, 2.718281828459045, run)),
        (recs["ünï cödé.png"].id, LandmarkPoint(2, 5e-17, 47.49999999999999, Status.CORRECTED,
                                                Source.MANUAL)),
        (recs["ünï cödé.png"].id, LandmarkPoint(3, None, None, Status.ABSENT, Source.MANUAL)),
        (recs["=cmd.png"].id, LandmarkPoint(1, 63.0, 1e-3, Status.ACCEPTED, Source.STAGE1,
                                            0.5, None, run)),
    ]
    proj.set_points(rows)
    proj.set_calibration((0.1, 0.125))
    return {r.name: proj.points(r.id) for r in proj.images()}


def _by_name(proj) -> dict[str, list[LandmarkPoint]]:
    return {r.name: proj.points(r.id) for r in proj.images()}


def test_csv_long_round_trip_exact(store, tmp_path):
    a = _project(store, tmp_path / "a")
    before = _fill(a)
    out = tmp_path / "points.csv"
    n = formats.export_csv(a, out)
    assert n == 6
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: spreadsheets read UTF-8 right
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert tuple(rows[0]) == formats.LONG_COLUMNS
    cells = {c for r in rows for c in r}
    assert "'=cmd.png" in cells and "'-Menton" in cells and "'=Gonion" in cells
    assert "-3.5" in cells and "-0.25" in cells  # negative numbers stay numbers
    assert "0.30000000000000004" in cells  # repr precision
    ex_row = next(r for r in rows if r[0] == "001.png" and r[1] == "0")
    assert ex_row[5:8] == [repr(10.25 * 0.125), repr(20.5 * 0.1), "calibration (user)"]

    b = _project(store, tmp_path / "b")
    run_b = b.start_run("stage2", {})  # same run id exists in the target: kept
    rep = formats.import_csv(b, out)
    assert rep.faults == [] and rep.unknown_images == []
    assert rep.imported == 5 and rep.absent == 1 and rep.images_matched == 3
    assert run_b == 1
    assert _by_name(b) == before


def test_json_round_trip_exact(store, tmp_path):
    a = _project(store, tmp_path / "a")
    before = _fill(a)
    out = tmp_path / "points.json"
    assert formats.export_json(a, out) == 6
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["format"] == "lmk_studio-points" and doc["template"]["name"] == "t4"
    im = {i["name"]: i for i in doc["images"]}
    assert im["001.png"]["exemplar"] is True and im["001.png"]["spacing"] == [0.1, 0.125]
    b = _project(store, tmp_path / "b")
    rep = formats.import_json(b, out)
    assert rep.faults == []
    got = _by_name(b)
    # run ids that do not exist in b are dropped (noted), the rest is exact
    assert rep.notes and "run id dropped" in rep.notes[0]
    strip = {k: [p.__class__(**{**p.__dict__, "run_id": None}) for p in v]
             for k, v in before.items()}
    assert got == strip


def test_csv_wide_round_trip_positions(store, tmp_path):
    a = _project(store, tmp_path / "a")
    before = _fill(a)
    out = tmp_path / "wide.csv"
    assert formats.export_csv(a, out, wide=True) == 4  # one row per image
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert rows[0][:5] == ["image", "Sella_x", "Sella_y", "Nasion_x", "Nasion_y"]
    assert rows[0][5] == "'-Menton_x"
    b = _project(store, tmp_path / "b")
    rep = formats.import_csv(b, out, status=Status.ACCEPTED)
    assert rep.faults == [] and rep.imported == 5 and rep.absent == 1
    got = _by_name(b)
    for name, pts in before.items():
        for p, q in zip(pts, got[name], strict=True):
            assert (q.x, q.y) == (p.x, p.y)
            assert q.status is (p.status if p.status in (Status.UNLABELLED, Status.ABSENT)
                                else Status.ACCEPTED)


def test_reviewed_only_and_coco(store, tmp_path):
    a = _project(store, tmp_path / "a")
    _fill(a)
    out = tmp_path / "r.csv"
    formats.export_csv(a, out, reviewed_only=True)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert {r["status"] for r in rows} == {"exemplar", "corrected", "accepted"}
    coco = tmp_path / "c.json"
    n = formats.export_coco(a, coco)
    assert n == 5
    d = json.loads(coco.read_text(encoding="utf-8"))
    assert d["categories"][0]["keypoints"] == NAMES
    ann = {img["file_name"]: next(x for x in d["annotations"] if x["image_id"] == img["id"])
           for img in d["images"]}
    u = ann["ünï cödé.png"]
    assert u["keypoints"][0:3] == [-3.5, -0.25, 2]
    assert u["keypoints"][3:6] == [0.0, 0.0, 0]  # unlabelled
    assert u["keypoints"][9:12] == [0.0, 0.0, 0]  # absent
    assert u["num_keypoints"] == 2
    assert u["scores"] == [0.8123456789012345, 0.0, 1.0, 0.0]
    assert ann["004.png"]["num_keypoints"] == 0 and len(d["annotations"]) == 4


def test_import_labelme_matches_reports_and_is_atomic(store, tmp_path, monkeypatch):
    proj = _project(store, tmp_path)
    src = tmp_path / "lm ü 日本"  # unicode folder
    src.mkdir()
    _labelme(src / "001.json", [_pt(f"l{k}", 10 + k, 20 + k) for k in range(1, 5)])
    _labelme(src / "other.json", [_pt("l1", 1, 1)], image="../x/ünï cödé.png")  # via imagePath
    _labelme(src / "999.json", [_pt("l1", 1, 1)])  # no such image
    _labelme(src / "004.json", [_pt("l1", 1, 1)], w=100, h=100)  # size mismatch
    rep = formats.import_labelme(proj, src)
    assert rep.files_read == 4 and rep.images_matched == 2 and rep.imported == 5
    assert rep.unknown_images == ["999.png"]
    pairs = _pairs(rep.faults)
    assert ("999.json", "-") in pairs and ("004.json", "-") in pairs
    assert {("other.json", f"l{k}") for k in (2, 3, 4)} <= pairs
    recs = {r.name: r for r in proj.images()}
    p = proj.points(recs["001.png"].id)[2]
    assert (p.x, p.y, p.status, p.source) == (12.5, 22.5, Status.ACCEPTED, Source.IMPORTED)

    # a failing write leaves the project exactly as it was
    before = _by_name(proj)
    _labelme(src / "001.json", [_pt("l1", 33, 33)])

    def boom(rows):
        raise store.ProjectError("disk I/O error")

    monkeypatch.setattr(proj, "set_points", boom)
    with pytest.raises(ImportFault, match="nothing was written"):
        formats.import_labelme(proj, src)
    monkeypatch.undo()
    assert _by_name(proj) == before


def test_import_refuses_nothing_and_two_exemplars(store, tmp_path):
    proj = _project(store, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImportFault, match="no .json files"):
        formats.import_labelme(proj, empty)
    src = tmp_path / "lm"
    src.mkdir()
    _labelme(src / "zzz.json", [_pt("l1", 1, 1)])
    with pytest.raises(ImportFault, match="nothing to import"):
        formats.import_labelme(proj, src)
    _labelme(src / "001.json", [_pt("l1", 1, 1)])
    _labelme(src / "004.json", [_pt("l1", 1, 1)])
    with pytest.raises(ImportFault, match="exemplar points for 2 images"):
        formats.import_labelme(proj, src, status=Status.EXEMPLAR)
    assert all(not p.placed for pts in proj.all_points().values() for p in pts)


def test_import_isbi_and_csv_faults(store, tmp_path):
    proj = _project(store, tmp_path)
    src = tmp_path / "isbi"
    src.mkdir()
    (src / "001.txt").write_text("1,2\n3,4\n5,6\n7,8\n99,99\n", encoding="utf-8")
    (src / "004.txt").write_text("1,2\n300,4\n", encoding="utf-8")
    rep = formats.import_isbi(proj, src, status=Status.PREDICTED)
    assert rep.imported == 5
    assert _pairs(rep.faults) == {("004.txt", "l2"), ("004.txt", "l3"), ("004.txt", "l4")}
    recs = {r.name: r for r in proj.images()}
    assert proj.points(recs["001.png"].id)[3].x == 7.0

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "image,landmark_index,landmark_name,x_px,y_px,status\n"
        "001.png,0,Sella,1,2,accepted\n"
        "001.png,0,Sella,5,5,accepted\n"  # duplicate row -> neither
        "004.png,,Nowhere,1,1,accepted\n"  # unknown landmark
        "004.png,1,Nasion,abc,1,accepted\n"  # bad number
        "004.png,2,,3,3,bogus\n"  # bad status
        "nope.png,1,Nasion,1,1,accepted\n"  # unknown image
        "004.png,3,,3.5,-1,\n",  # by index, no status -> accepted
        encoding="utf-8")
    rep = formats.import_csv(proj, bad)
    assert rep.imported == 1 and rep.unknown_images == ["nope.png"]
    probs = " | ".join(rep.faults)
    for s in ("same point", "unknown landmark", "not a finite number", "unknown status 'bogus'",
              "no project image named 'nope.png'"):
        assert s in probs
    assert proj.points(recs["004.png"].id)[3] == LandmarkPoint(3, 3.5, -1.0, Status.ACCEPTED,
                                                               Source.IMPORTED)
    notcsv = tmp_path / "n.csv"
    notcsv.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ImportFault, match="no 'image' column"):
        formats.import_csv(proj, notcsv)


def test_read_points_table_for_truth(tmp_path):
    p = tmp_path / "truth.csv"
    p.write_text("image,landmark_index,landmark_name,x_px,y_px\n"
                 "a.png,0,Sella,1.5,2.5\na.png,3,=Gonion,4,5\n", encoding="utf-8")
    table, faults = formats.read_points_table(p, NAMES)
    assert faults == []
    np.testing.assert_array_equal(table["a.png"][[0, 3]], [[1.5, 2.5], [4, 5]])
    assert np.isnan(table["a.png"][1]).all()


def test_semicolon_csv_with_decimal_commas(tmp_path):
    """As a spreadsheet in a decimal-comma locale saves it: ';' separated, '12,5'."""
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufeffimage;landmark_index;landmark_name;x_px;y_px\r\n"
                  "a.png;0;Sella;12,5;-3,25\r\na.png;1;Nasion;7;8.5\r\n".encode())
    table, faults = formats.read_points_table(p, NAMES)
    assert faults == []
    np.testing.assert_array_equal(table["a.png"][:2], [[12.5, -3.25], [7.0, 8.5]])


def test_export_in_mm_scales_by_spacing_and_refuses_without_it(store, tmp_path):
    import csv as _csv

    proj = _project(store, tmp_path)
    _fill(proj)                                    # project calibration: row 0.1, col 0.125 mm
    out = tmp_path / "wide_mm.csv"
    formats.export_csv(proj, out, wide=True, units="mm")
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = {r["image"]: r for r in _csv.DictReader(fh)}
    assert float(rows["001.png"]["Sella_x_mm"]) == pytest.approx(10.25 * 0.125)
    assert float(rows["001.png"]["Sella_y_mm"]) == pytest.approx(20.5 * 0.1)
    formats.export_json(proj, tmp_path / "mm.json", units="mm")
    doc = json.loads((tmp_path / "mm.json").read_text(encoding="utf-8"))
    p0 = next(i for i in doc["images"] if i["name"] == "001.png")["points"][0]
    assert (p0["x_mm"], p0["y_mm"]) == pytest.approx((10.25 * 0.125, 20.5 * 0.1))
    with pytest.raises(LmkError, match="COCO keypoints are pixel"):
        formats.export_coco(proj, tmp_path / "c.json", units="mm")
    proj.set_calibration(None)
    before = out.read_bytes()
    with pytest.raises(LmkError, match="no pixel spacing.*Nothing was written"):
        formats.export_csv(proj, out, wide=True, units="mm")
    assert out.read_bytes() == before
    proj.close()


# ---- hostile annotation files: faults, never tracebacks or hangs (issue 13, item 5) ----------
@pytest.mark.parametrize("text,problem", [
    ('{"shapes": [{"label": "l1", "points": [[1' + "0" * 5000 + ', 2]]}]}', "not usable JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_labelme_hostile_json_is_a_fault(tmp_path, text, problem):
    p = tmp_path / "a.json"
    p.write_text(text, encoding="utf-8")
    pts, faults = read_labelme_points(p, NAMES)
    assert pts == {} and len(faults) == 1 and problem in faults[0].problem


def test_labelme_huge_integer_coordinate_is_a_fault(tmp_path):
    p = _labelme(tmp_path / "a.json", [_pt("Sella", 10**400, 2)])
    pts, faults = read_labelme_points(p, NAMES)
    assert 0 not in pts and any("not numbers" in f.problem for f in faults)


def test_project_json_points_not_a_list_is_a_fault(store, tmp_path):
    proj = _project(store, tmp_path)
    doc = {"format": "lmk_studio-points", "version": 1, "images": [
        {"name": "001.png", "points": 5},
        {"name": "004.png", "points": [{"index": 0, "x": 1.0, "y": 2.0, "status": "accepted"}]}]}
    src = tmp_path / "p.json"
    src.write_text(json.dumps(doc), encoding="utf-8")
    rep = formats.import_json(proj, src)
    assert rep.imported == 1 and any("'points' is int" in f.problem for f in rep.faults)
    for bad in ("[" * 50_000 + "]" * 50_000, '{"version": 1' + "0" * 5000 + "}"):
        src.write_text(bad, encoding="utf-8")
        with pytest.raises(ImportFault, match="not usable JSON"):
            formats.import_json(proj, src)
    proj.close()


def test_many_copies_of_a_label_are_resolved_in_linear_time(tmp_path):
    import time

    rng = np.random.default_rng(0)
    far = [_pt("Sella", float(x), float(y)) for x, y in rng.uniform(0, 40, (20_000, 2))]
    near = [_pt("Nasion", 5.0 + float(d), 5.0) for d in rng.uniform(0, 0.9, 20_000)]
    p = _labelme(tmp_path / "a.json", far + near)
    t0 = time.monotonic()
    pts, faults = read_labelme_points(p, NAMES)
    assert time.monotonic() - t0 < 10.0
    sella = next(f for f in faults if f.label == "Sella" and "duplicate" in f.problem)
    assert "20000 points" in sella.problem and "none kept" in sella.problem
    assert len(sella.problem) < 400  # five positions quoted, not twenty thousand
    assert 0 not in pts and 1 in pts  # Nasion's copies lie within 1 px: their mean is kept


@pytest.mark.parametrize("n", [2, 3, 10, 300, 1200])
def test_point_spread_matches_the_pairwise_maximum(n):
    rng = np.random.default_rng(n)
    for xy in (rng.normal(size=(n, 2)) * 10,
               np.c_[np.cos(np.linspace(0, 6.28, n)), np.sin(np.linspace(0, 6.28, n))]):
        d = xy[:, None, :] - xy[None, :, :]
        assert formats.point_spread(xy) == pytest.approx(float(np.sqrt((d ** 2).sum(-1)).max()))


def test_csv_coordinates_far_outside_the_image_are_faults(store, tmp_path):
    """x = 1e308 was imported, after which `export --coco` died on an infinite bounding box."""
    proj = _project(store, tmp_path)
    src = tmp_path / "p.csv"
    src.write_text("image,landmark_index,x_px,y_px\n001.png,0,1e308,2\n001.png,1,-200,2\n"
                   "001.png,2,-3.5,2\n", encoding="utf-8")
    rep = formats.import_csv(proj, src)
    assert rep.imported == 1  # -3.5 is just outside a 64 px image: kept (predictions may be)
    assert sum("far outside the 64x48 image" in f.problem for f in rep.faults) == 2
    formats.export_coco(proj, tmp_path / "c.json")
    proj.close()


def test_unknown_labels_are_summarised_not_listed(store, tmp_path):
    proj = _project(store, tmp_path)
    p = _labelme(tmp_path / "001.json", [_pt(f"junk{k}", 1, 1) for k in range(20_000)])
    with pytest.raises(ImportFault) as ei:
        formats.import_labelme(proj, p)
    msg = str(ei.value)
    assert len(msg) < 10_000 and "... and 19984 more fault(s)" in msg
    assert "unknown label" in msg.splitlines()[-1]
    proj.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_annotation_fifo_is_a_fault_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "a.json")
    pts, faults = read_labelme_points(tmp_path / "a.json", NAMES)
    assert pts == {} and "FIFO" in faults[0].problem


def test_annotation_files_over_the_item_cap_are_refused(store, tmp_path, monkeypatch):
    """Each row costs ~30 us: the cap keeps one file under ~10 s (bench_hostile_inputs.py)."""
    monkeypatch.setattr(formats, "MAX_ANNOTATION_ITEMS", 10)
    proj = _project(store, tmp_path)
    src = tmp_path / "p.csv"
    src.write_text("image,landmark_index,x_px,y_px\n" + "001.png,0,1,2\n" * 20, encoding="utf-8")
    with pytest.raises(ImportFault, match="p.csv: 21 lines, more than the 10 rows"):
        formats.import_csv(proj, src)
    doc = {"format": "lmk_studio-points", "version": 1,
           "images": [{"name": "001.png", "points": [{"index": 0, "x": 1, "y": 1}] * 11}]}
    src = tmp_path / "p.json"
    src.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ImportFault, match="p.json: 11 points, more than the 10"):
        formats.import_json(proj, src)
    p = _labelme(tmp_path / "001.json", [_pt("Sella", 1, 1)] * 11)
    pts, faults = read_labelme_points(p, NAMES)
    assert pts == {} and "11 shapes, more than the 10" in faults[0].problem
    proj.close()
