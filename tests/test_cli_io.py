"""`lmk-studio import / export / evaluate` through lmk_studio.cli.main."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lmk_studio import cli
from lmk_studio.core.points import LandmarkPoint, Source, Status

store = pytest.importorskip("lmk_studio.core.store")


def main(argv: list[str]) -> int:
    return cli.main(argv)

NAMES = ["Sella", "Nasion", "Menton"]
IMGS = ["a.png", "b.png", "c.png"]


def _template():
    from lmk_studio.core.templates import LandmarkDef, Template

    return Template("t3", [LandmarkDef(n) for n in NAMES])


def _project(tmp_path: Path) -> Path:
    import cv2

    d = tmp_path / "imgs"
    d.mkdir()
    for n in IMGS:
        ok, buf = cv2.imencode(".png", np.full((40, 50), 128, np.uint8))
        (d / n).write_bytes(buf.tobytes())
    path = tmp_path / "proj.lmk"
    store.Project.create(path, _template(), images_dir=d).close()
    return path


def _labelme(path: Path, pts: dict[str, tuple[float, float]], w: int = 50, h: int = 40) -> None:
    shapes = [{"label": k, "points": [list(v)], "shape_type": "point"} for k, v in pts.items()]
    path.write_text(json.dumps({"shapes": shapes, "imagePath": path.stem + ".png",
                                "imageWidth": w, "imageHeight": h}), encoding="utf-8")


def test_import_labelme_prints_counts_and_every_fault(tmp_path, capsys):
    proj = _project(tmp_path)
    lm = tmp_path / "lm"
    lm.mkdir()
    _labelme(lm / "a.json", {"l1": (1.5, 2.5), "l2": (3.5, 4.5), "l3": (5.5, 6.5)})
    _labelme(lm / "b.json", {"l1": (1.5, 2.5), "l3": (5.5, 6.5)})  # l2 missing
    _labelme(lm / "zz.json", {"l1": (1, 1)})  # unknown image
    rc = main(["import", str(proj), "--labelme", str(lm)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "3 file(s) read, 2 image(s) matched, 5 point(s) imported" in out
    assert "fault: b.json: l2: missing label" in out
    assert "unknown image: zz.png" in out and "fault: zz.json: -: no project image" in out
    with store.Project.open(proj) as p:
        recs = {r.name: r for r in p.images()}
        assert p.points(recs["a.png"].id)[0] == LandmarkPoint(0, 1.0, 2.0, Status.ACCEPTED,
                                                              Source.IMPORTED)


def test_import_refused_writes_nothing_and_exits_2(tmp_path, capsys):
    proj = _project(tmp_path)
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "a.json").write_text("{broken", encoding="utf-8")
    rc = main(["import", str(proj), "--labelme", str(lm)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "nothing to import" in err and "a.json: -: not valid JSON" in err
    with store.Project.open(proj) as p:
        assert not any(q.placed for pts in p.all_points().values() for q in pts)
    rc = main(["import", str(proj), "--isbi", str(tmp_path / "missing")])
    assert rc == 2 and "missing: not found" in capsys.readouterr().err


def test_export_all_formats_then_reimport_csv(tmp_path, capsys):
    proj = _project(tmp_path)
    with store.Project.open(proj) as p:
        recs = {r.name: r for r in p.images()}
        p.set_points([
            (recs["a.png"].id, LandmarkPoint(0, 10.0, 11.0, Status.EXEMPLAR, Source.MANUAL)),
            (recs["b.png"].id, LandmarkPoint(1, -2.5, 0.1, Status.PREDICTED, Source.STAGE2, 0.7)),
            (recs["c.png"].id, LandmarkPoint(2, 3.0, 4.0, Status.CORRECTED, Source.MANUAL)),
        ])
    csv_f, wide_f = tmp_path / "o.csv", tmp_path / "w.csv"
    json_f, coco_f = tmp_path / "o.json", tmp_path / "c.json"
    rc = main(["export", str(proj), "--csv", str(csv_f), "--json", str(json_f),
               "--coco", str(coco_f)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"wrote 3 row(s) of points (3 images) to {csv_f}" in out
    assert "wrote 3 placed keypoints of 3 images (COCO)" in out
    assert json.loads(json_f.read_text(encoding="utf-8"))["format"] == "lmk_studio-points"
    assert main(["export", str(proj), "--csv", str(wide_f), "--wide", "--reviewed-only"]) == 0
    wide = wide_f.read_text(encoding="utf-8-sig").splitlines()
    assert wide[0] == "image,Sella_x,Sella_y,Nasion_x,Nasion_y,Menton_x,Menton_y"
    assert wide[2] == "b.png,,,,,,"  # predicted point left out of a reviewed-only export
    # re-import the long CSV into a fresh project (statuses become --as)
    other = tmp_path / "o2"
    other.mkdir()
    proj2 = _project(other)
    assert main(["import", str(proj2), "--csv", str(csv_f), "--as", "corrected"]) == 0
    assert "3 point(s) imported" in capsys.readouterr().out
    with store.Project.open(proj2) as p:
        recs = {r.name: r for r in p.images()}
        q = p.points(recs["b.png"].id)[1]
        assert (q.x, q.y, q.status) == (-2.5, 0.1, Status.CORRECTED)


def test_export_needs_a_target(tmp_path, capsys):
    proj = _project(tmp_path)
    assert main(["export", str(proj)]) == 2
    assert "give at least one of --csv" in capsys.readouterr().err
    assert main(["export", str(proj), "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_two_annotators_averaged_exemplar_excluded(tmp_path, capsys):
    proj = _project(tmp_path)
    with store.Project.open(proj) as p:
        recs = {r.name: r for r in p.images()}
        p.set_calibration((0.5, 0.5))
        p.set_points([(recs["a.png"].id, LandmarkPoint(k, 0.0, 0.0, Status.EXEMPLAR,
                                                       Source.MANUAL)) for k in range(3)])
        p.set_points([
            (recs["b.png"].id, LandmarkPoint(0, 13.0, 14.0, Status.PREDICTED, Source.STAGE2)),
            (recs["b.png"].id, LandmarkPoint(1, 20.0, 20.0, Status.PREDICTED, Source.STAGE2)),
            (recs["b.png"].id, LandmarkPoint(2, 0.0, 0.0, Status.ACCEPTED, Source.STAGE2)),
            (recs["c.png"].id, LandmarkPoint(0, 6.0, 8.0, Status.PREDICTED, Source.STAGE2)),
        ])
    d1, d2 = tmp_path / "doc1", tmp_path / "doc2"
    d1.mkdir()
    d2.mkdir()
    # labelme values are +0.5 (pixel-corner origin); doctor means in store px:
    # b: l1 (10, 10), l2 (20, 20), l3 doc1 only (0, 0); c: l1 (0, 0), l2/l3 missing
    _labelme(d1 / "a.json", {"l1": (99, 99)})  # exemplar: ignored
    _labelme(d1 / "b.json", {"l1": (8.5, 10.5), "l2": (20.5, 20.5), "l3": (0.5, 0.5)})
    _labelme(d2 / "b.json", {"l1": (12.5, 10.5), "l2": (20.5, 20.5)})
    _labelme(d1 / "c.json", {"l1": (0.5, 0.5)})
    _labelme(d2 / "c.json", {"l1": (0.5, 0.5)})
    out_json = tmp_path / "m.json"
    rc = main(["evaluate", str(proj), "--truth", str(d1), str(d2), "--json", str(out_json),
               "--thresholds", "2,5"])
    out = capsys.readouterr().out
    assert rc == 0
    # errors (px): b l1 = 5, b l2 = 0, b l3 = 0, c l1 = 10 -> mm at 0.5: 2.5, 0, 0, 5
    assert "exemplar (excluded): a.png" in out
    assert "MRE: 1.88 ± 2.07 mm (SD)" in out
    assert "[3.75 ± 4.15 px]" in out
    assert "doc2/c.json: l2: missing label" in out
    m = json.loads(out_json.read_text(encoding="utf-8"))
    r = m["metrics"]
    assert r["unit"] == "mm" and r["n_images"] == 2 and r["n_evaluated"] == 4
    assert r["mre"] == pytest.approx(7.5 / 4)
    assert r["sd"] == pytest.approx(math.sqrt(np.var([2.5, 0, 0, 5])))
    assert r["sdr"] == {"2.0": 50.0, "5.0": 100.0}
    assert r["per_landmark"][0]["mre"] == pytest.approx(3.75)
    assert m["exemplar"] == "a.png"
    assert m["evaluated_points_by_status"] == {"accepted": 1, "predicted": 3}


def test_evaluate_truth_csv_px_and_bad_thresholds(tmp_path, capsys):
    proj = _project(tmp_path)
    with store.Project.open(proj) as p:
        recs = {r.name: r for r in p.images()}
        p.set_points([(recs["b.png"].id, LandmarkPoint(0, 3.0, 4.0, Status.PREDICTED,
                                                       Source.CLASSICAL))])
    t = tmp_path / "truth.csv"
    t.write_text("image,landmark_index,landmark_name,x_px,y_px\nb.png,0,Sella,0,0\n"
                 "b.png,1,Nasion,1,1\nzzz.png,0,Sella,0,0\n", encoding="utf-8")
    assert main(["evaluate", str(proj), "--truth", str(t)]) == 0
    out = capsys.readouterr().out
    assert "MRE: 5.00 ± 0.00 px" in out and "exemplar (excluded): none set" in out
    assert "predictions missing: 1" in out and "match no project image: zzz.png" in out
    assert main(["evaluate", str(proj), "--truth", str(t), "--thresholds", "2,x"]) == 2
    assert "--thresholds '2,x'" in capsys.readouterr().err


@pytest.mark.shared_data
def test_evaluate_hamedan_doctor_vs_doctor(hamedan, tmp_path, capsys):
    """One doctor imported as the 'prediction', the other as truth: 119 images, exemplar 001."""
    from lmk_studio.core.templates import load_template

    path = tmp_path / "h.lmk"
    with store.Project.create(path, load_template("isbi2015-ceph-19"),
                              images_dir=hamedan / "images") as p:
        p.set_calibration((0.125, 0.125))
    ann = hamedan / "annotations"
    assert main(["import", str(path), "--labelme", str(ann / "Dr.mollabashi")]) == 0
    with store.Project.open(path) as p:
        p.set_exemplar(p.images()[0].id)
    capsys.readouterr()
    out_json = tmp_path / "h.json"
    assert main(["evaluate", str(path), "--truth", str(ann / "Dr.farhadifar"),
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "exemplar (excluded): 001.png" in out
    assert "Dr.farhadifar/002.json: l17: duplicate label" in out
    r = json.loads(out_json.read_text(encoding="utf-8"))["metrics"]
    assert r["n_images"] == 119 and r["unit"] == "mm"
    assert r["n_evaluated"] == 119 * 19 - 10  # 8 + 2 faulty points; 001 has none of them
    assert 11.0 < r["mre_px"] < 12.0  # the README's ~11.8 px inter-doctor floor


# ---- exports that respect what is there (issue 13, item 7) ---------------------------------
def _one_point(proj: Path) -> None:
    with store.Project.open(proj) as p:
        rec = p.images()[0]
        p.set_points([(rec.id, LandmarkPoint(0, 1.0, 2.0, Status.ACCEPTED, Source.MANUAL))])


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_export_to_a_device_is_refused_and_the_node_kept(tmp_path, capsys):
    import stat

    proj = _project(tmp_path)
    assert main(["export", str(proj), "--csv", "/dev/full"]) == 2
    assert "character device" in capsys.readouterr().err
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


def test_export_csv_and_json_write_nothing_when_one_fails(tmp_path, capsys, monkeypatch):
    import errno
    import os

    proj = _project(tmp_path)
    _one_point(proj)
    out = tmp_path / "out"
    out.mkdir()
    n = {"fsync": 0}
    real = os.fsync

    def fsync(fd: int) -> None:  # the second file's data does not fit on the disk
        n["fsync"] += 1
        if n["fsync"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc = main(["export", str(proj), "--csv", str(out / "a.csv"), "--json", str(out / "a.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left" in err and "nothing was written" in err
    assert list(out.iterdir()) == []


def test_export_same_file_twice_is_refused(tmp_path, capsys):
    proj = _project(tmp_path)
    t = tmp_path / "x.json"
    assert main(["export", str(proj), "--json", str(t), "--coco", str(t)]) == 2
    assert "same file" in capsys.readouterr().err and not t.exists()


def test_names_with_a_leading_tab_or_space_survive_a_csv_round_trip(tmp_path, capsys):
    import cv2

    d = tmp_path / "imgs"
    d.mkdir()
    names = [" a.png", "\tb.png", "=c.png"]
    for n in names:
        ok, buf = cv2.imencode(".png", np.full((40, 50), 128, np.uint8))
        (d / n).write_bytes(buf.tobytes())
    proj = tmp_path / "p.lmk"
    with store.Project.create(proj, _template(), images_dir=d) as p:
        p.set_points([(r.id, LandmarkPoint(0, 1.0 + r.id, 2.0, Status.ACCEPTED, Source.MANUAL))
                      for r in p.images()])
        before = {r.name: p.points(r.id)[0] for r in p.images()}
    csv_f = tmp_path / "o.csv"
    assert main(["export", str(proj), "--csv", str(csv_f)]) == 0
    proj2 = tmp_path / "p2.lmk"
    store.Project.create(proj2, _template(), images_dir=d).close()
    capsys.readouterr()
    assert main(["import", str(proj2), "--csv", str(csv_f)]) == 0
    out = capsys.readouterr().out
    assert "3 point(s) imported" in out and "0 unknown image(s)" in out
    with store.Project.open(proj2) as p:
        after = {r.name: p.points(r.id)[0] for r in p.images()}
    assert sorted(after) == sorted(names)
    assert {k: (v.x, v.y) for k, v in after.items()} == {k: (v.x, v.y) for k, v in before.items()}
